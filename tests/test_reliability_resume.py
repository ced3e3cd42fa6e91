"""Kill -9 halfway, run the same command again: the run resumes and ends bit-for-bit where an uninterrupted
run ends (adapter tensors, every deterministic training record, evaluation), for plain LoRA, SDS-LoRA past its
warm-up, and one method of each family whose state goes beyond LoRA's: a residual initialisation that rewrites
the base weights (PiSSA), an optimiser of its own with its own state (ScaledAdamW), and a learned magnitude
vector (DoRA).

Dropout is on (``method.dropout=0.1``) so the resumed run only matches if the RNG state is restored too; the
checkpoint resumed from falls inside a logging window (logging every 3 steps, checkpoints every 2), so the
logged losses only match if the open window is restored as well.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT
from loralab.io import read_json
from loralab.training.checkpoints import checkpoint_problem

# Small batches and two adapted projections keep each step cheap; what is tested does not depend on either.
COMMON = ["trainer.save_steps=2", "trainer.logging_steps=3", "trainer.per_device_train_batch_size=2",
          "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4", "method.dropout=0.1", "progress=false"]
METHODS = {
    "lora": ["method=lora", "trainer.max_steps=8"],
    # the warm-up ends after step 2, so the kill (after checkpoint 4 is complete) lands in the SDS phase; the
    # default phased schedule refreshes the bases after steps 3, 4 and 6: on both sides of the kill
    "sds_lora": ["method=sds_lora", "method.warmup_steps=2", "trainer.max_steps=10"],
    "pissa": ["method=pissa", "trainer.max_steps=8"],
    "scaled_adamw": ["method=scaled_adamw", "trainer.max_steps=8"],
    "dora": ["method=dora", "trainer.max_steps=8"],
}
PROCESS_LOCAL = ("resumed_from", "session_mean_loss", "skipped_checkpoints")  # differ by design after a resume
KILL_AFTER = 4  # kill once checkpoint-4 is complete, about halfway
# One compute thread per process: the runs below go side by side on a small machine, where several
# multi-threaded torch processes would spin against each other. Every process gets the same setting, so
# the results are comparable bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start_reference(results: Path, names: list[str], log_file: Path) -> subprocess.Popen:
    """Uninterrupted references of several methods in one process (fewer interpreter start-ups), through the
    same runner and the same composed configs as ``run.py`` (checked below: same run directory name)."""
    script = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import compose; from loralab.runner import run\n"
        + "".join(f"run(compose(*{METHODS[n] + COMMON!r}, runs_dir={str(results)!r}))\n" for n in names)
    )
    with log_file.open("w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=log, text=True)


def _complete(results: Path) -> bool:
    found = list((results / "runs").glob(f"*/checkpoints/checkpoint-{KILL_AFTER}"))
    try:
        return bool(found) and checkpoint_problem(found[0]) is None
    except OSError:  # a file vanished while the run was writing: not complete yet
        return False


def _kill_after_checkpoint(procs: dict[str, subprocess.Popen], work: dict[str, Path]) -> None:
    """Wait (polling, not sleeping blindly) until each run's checkpoint KILL_AFTER is complete, then SIGKILL it."""
    deadline = time.monotonic() + 300
    pending = dict(procs)
    try:
        while pending:
            for name, proc in list(pending.items()):
                if _complete(work[name]):
                    os.kill(proc.pid, signal.SIGKILL)
                    del pending[name]
                else:
                    assert proc.poll() is None, f"{name} ended before it could be killed"
            assert time.monotonic() < deadline, f"no checkpoint appeared for {list(pending)}"
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            if proc.poll() is None and proc in pending.values():
                proc.kill()
            proc.wait(timeout=60)
    for name, proc in procs.items():
        assert proc.returncode == -signal.SIGKILL, f"{name} finished before the kill landed"
        (run_dir,) = (work[name] / "runs").iterdir()
        assert not (run_dir / "metrics.json").exists()
        assert read_json(run_dir / "status.json")["state"] == "running"  # SIGKILL leaves no chance to record


def _popen(args: list[str], results: Path, log: Path) -> subprocess.Popen:
    # output goes to a file, not a pipe: nobody reads a pipe while several processes run, and a full one blocks
    with log.open("w") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "run.py", *args, f"paths.results_dir={results}"], cwd=ROOT,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True)


def test_the_sds_schedule_straddles_the_kill() -> None:
    """Guards the premise of the SDS case below: transition and refreshes both before and after the kill."""
    from loralab.methods.sds_lora import refresh_steps

    refreshes = refresh_steps(10, 2, "phased", k=5)
    assert any(s <= KILL_AFTER for s in refreshes) and any(s > KILL_AFTER for s in refreshes), refreshes


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_to_the_same_result(tmp_path: Path) -> None:
    # The first processes run side by side (the machine's cores overlap their start-up); each run is
    # single-process and deterministic, so running concurrently changes nothing in what they compute.
    reference = tmp_path / "reference"
    work = {name: tmp_path / name for name in METHODS}
    names = list(METHODS)  # two reference processes: one would be the last to finish by far
    ref_logs = [tmp_path / "reference-1.log", tmp_path / "reference-2.log"]
    ref_procs = [_start_reference(reference, names[:3], ref_logs[0]),
                 _start_reference(reference, names[3:], ref_logs[1])]
    killed = {name: _popen(args + COMMON, work[name], tmp_path / f"{name}-killed.log")
              for name, args in METHODS.items()}
    _kill_after_checkpoint(killed, work)

    # the same commands again
    logs = {name: tmp_path / f"{name}-again.log" for name in METHODS}
    again = {name: _popen(args + COMMON, work[name], logs[name]) for name, args in METHODS.items()}
    for name, proc in again.items():
        proc.wait(timeout=400)
        output = logs[name].read_text()
        assert proc.returncode == 0, output[-3000:]
        assert "resuming from" in output, name
    for ref_proc, ref_log in zip(ref_procs, ref_logs):
        ref_proc.wait(timeout=400)
        assert ref_proc.returncode == 0, ref_log.read_text()[-3000:]

    for name in METHODS:
        (run_dir,) = (work[name] / "runs").iterdir()
        (ref_dir,) = reference.glob(f"runs/*-{name}-*")
        assert ref_dir.name == run_dir.name, "the reference is not the same configuration"
        got, want = read_json(run_dir / "metrics.json"), read_json(ref_dir / "metrics.json")
        resumed = got["train"]["resumed_from"]
        assert resumed is not None and int(resumed.rsplit("-", 1)[1]) >= KILL_AFTER, resumed
        assert want["train"]["resumed_from"] is None
        for key in {*got["train"], *want["train"]} - set(PROCESS_LOCAL):
            assert got["train"].get(key) == want["train"].get(key), (name, key, got["train"], want["train"])
        assert got["eval"] == want["eval"]
        assert got["cost"]["trainable_params"] == want["cost"]["trainable_params"]

        ours = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        theirs = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
        assert ours.keys() == theirs.keys() and ours
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
            assert bool((ours[key] == theirs[key]).all()), f"{name}: {key} differs after resume"
        if name == "sds_lora":  # the export has a non-zero Q half only once the SDS phase began
            a = next(v for k, v in ours.items() if k.endswith("lora_A.weight"))
            assert a.shape[0] == 2 * 8 and bool(a[8:].abs().sum() > 0)

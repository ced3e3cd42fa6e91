"""SIGTERM (a scheduler's preemption or time limit) mid-training: the run writes a checkpoint at the step it is
on, records itself as interrupted, exits 143; the same command then resumes there and ends bit-for-bit where
an uninterrupted run ends, although no scheduled checkpoint was ever written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import ROOT, compose
from loralab.io import read_json
from loralab.runner import run
from loralab.training import trainer as trainer_module
from loralab.training.checkpoints import checkpoint_problem
from loralab.training.termination import EXIT_STATUS, Terminated, TerminationFlag, graceful_termination

# save_steps beyond max_steps: the only mid-run checkpoint is the one SIGTERM asks for. Dropout is on, so the
# resumed run only matches the reference if the RNG state was saved with that checkpoint too.
ARGS = ["method=lora", "trainer.max_steps=24", "trainer.save_steps=1000", "trainer.logging_steps=1",
        "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "method.dropout=0.1",
        "eval.tasks.0.data.n=4", "progress=false"]
SIGNAL_AFTER_STEP = 3
PROCESS_LOCAL = ("resumed_from", "session_mean_loss", "skipped_checkpoints")  # differ by design after a resume
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two runs side by side on a small machine


def _start(results: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "run.py", *ARGS, f"paths.results_dir={results}"], cwd=ROOT,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True)


def _logged_step(results: Path) -> int:
    steps = [json.loads(line)["step"] for f in (results / "runs").glob("*/steps.jsonl")
             for line in f.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


@pytest.mark.slow
def test_sigterm_checkpoints_then_resumes_exactly(tmp_path: Path) -> None:
    reference = _start(tmp_path / "reference", tmp_path / "reference.log")
    results = tmp_path / "results"
    proc = _start(results, tmp_path / "first.log")
    deadline = time.monotonic() + 300
    while _logged_step(results) < SIGNAL_AFTER_STEP:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no training step logged in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_STATUS, (tmp_path / "first.log").read_text()[-3000:]
    assert "received SIGTERM" in (tmp_path / "first.log").read_text()

    (run_dir,) = (results / "runs").iterdir()
    status = read_json(run_dir / "status.json")
    assert status["state"] == "interrupted" and "Terminated" in status["error"]
    stopped_at = status["completed_steps"]
    assert SIGNAL_AFTER_STEP <= stopped_at < 24
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    assert checkpoint.name == f"checkpoint-{stopped_at}" and checkpoint_problem(checkpoint) is None

    resumed = _start(results, tmp_path / "second.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "finished" and status["resumed_from"].endswith(f"checkpoint-{stopped_at}")

    (reference_dir,) = (tmp_path / "reference" / "runs").iterdir()
    assert reference_dir.name == run_dir.name
    ours, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run_dir, reference_dir))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours)
    got, want = read_json(run_dir / "metrics.json"), read_json(reference_dir / "metrics.json")
    assert got["eval"] == want["eval"]
    for key in {*got["train"], *want["train"]} - set(PROCESS_LOCAL):
        assert got["train"].get(key) == want["train"].get(key), (key, got["train"], want["train"])


def test_sigterm_outside_training_raises_at_once() -> None:
    with pytest.raises(Terminated, match="SIGTERM"), graceful_termination():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs in this thread as soon as the signal arrives


def test_sigterm_while_training_waits_for_the_step_then_a_second_one_is_immediate() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with graceful_termination() as flag:
        assert isinstance(flag, TerminationFlag)
        flag.deferring = True                 # what StopOnTermination.on_train_begin does
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert flag.requested                 # recorded, nothing raised
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before   # the previous handler is back


# Logging every 4 steps and SIGTERM during step 6: the checkpoint falls inside a logging window (steps 5-8).
WINDOW = ["method=lora", "trainer.max_steps=10", "trainer.save_steps=1000", "trainer.logging_steps=4",
          "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "method.dropout=0.1",
          "eval.tasks.0.data.n=4"]
TERM_DURING_STEP = 6


class _SigtermDuringStep(TrainerCallback):
    """Sends this process SIGTERM while step ``step`` runs, as a scheduler would at any moment."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _logged_losses(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The training log of steps.jsonl (loss, gradient norm, learning rate per logging step); the end-of-session
    summaries (runtime, the session's own mean loss) are left out."""
    records = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


@pytest.mark.usefixtures("one_compute_thread")
def test_a_checkpoint_inside_a_logging_window_resumes_to_the_same_logged_losses(tmp_path: Path) -> None:
    reference = run(compose(*WINDOW, runs_dir=tmp_path / "reference"))
    results = tmp_path / "results"
    original = trainer_module.build_trainer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("loralab.runner.build_trainer", lambda *a, **k: original(
            *a, **{**k, "extra_callbacks": [*k.get("extra_callbacks", ()), _SigtermDuringStep(TERM_DURING_STEP)]}))
        with pytest.raises(Terminated):
            run(compose(*WINDOW, runs_dir=results))
    (run_dir,) = (results / "runs").iterdir()
    assert read_json(run_dir / "status.json")["completed_steps"] == TERM_DURING_STEP
    assert TERM_DURING_STEP % 4  # the premise: the checkpoint is not at a logging step

    resumed = run(compose(*WINDOW, runs_dir=results))
    assert resumed["train"]["resumed_from"].endswith(f"checkpoint-{TERM_DURING_STEP}")
    for key in {*reference["train"], *resumed["train"]} - set(PROCESS_LOCAL):
        assert resumed["train"].get(key) == reference["train"].get(key), (key, resumed["train"], reference["train"])
    assert resumed["eval"] == reference["eval"]
    (reference_dir,) = (tmp_path / "reference" / "runs").iterdir()
    logged = _logged_losses(run_dir)
    assert sorted(logged) == [4, 8] and logged == _logged_losses(reference_dir)  # step 8's loss: steps 5-8 in both

"""Runs that fail: recorded as failed (never left "running"), corrupt checkpoints detected and not loaded,
non-finite losses stopped with the step named, and ``force_rerun=true`` starting from scratch."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import compose
from loralab.errors import NonFiniteLossError
from loralab.io import read_json
from loralab.rundir import LOCK_FILE
from loralab.runner import run
from loralab.training import trainer as trainer_module
from loralab.training.checkpoints import CorruptCheckpointError, checkpoint_problem

# Small batches and two adapted projections keep each step cheap; what is tested does not depend on either.
SHORT = ["trainer.max_steps=6", "trainer.save_steps=2", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4"]
FAIL_AT = 5  # after step 5: checkpoints 2 and 4 are on disk


pytestmark = pytest.mark.usefixtures("one_compute_thread")


class _FailAfter(TrainerCallback):
    """Stands in for anything that breaks mid-training (an OOM, a bug in a callback, a lost file system)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"injected failure after step {self.step}")


def _run_dir(results: Path) -> Path:
    (run_dir,) = (results / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that raised after step 5: its results directory, checkpoints 2 and 4 included."""
    results = tmp_path_factory.mktemp("failed") / "results"
    original = trainer_module.build_trainer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("loralab.runner.build_trainer",
                      lambda *a, **k: original(*a, **{**k, "extra_callbacks": [*k.get("extra_callbacks", ()),
                                                                              _FailAfter(FAIL_AT)]}))
        with pytest.raises(RuntimeError, match="injected failure"):
            run(compose(*SHORT, runs_dir=results))
    return results


@pytest.fixture(scope="module")
def reference_adapter(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The same configuration run without interruption."""
    results = tmp_path_factory.mktemp("reference") / "results"
    run(compose(*SHORT, runs_dir=results))
    return load_file(_run_dir(results) / "adapter" / "adapter_model.safetensors")


def _copy(results: Path, tmp_path: Path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(results, target)
    return target


def test_failure_mid_training_is_recorded_not_left_running(failed_run: Path) -> None:
    run_dir = _run_dir(failed_run)
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed"
    assert status["error"] == f"RuntimeError: injected failure after step {FAIL_AT}"
    assert status["completed_steps"] == FAIL_AT and status["stage"] == "train"
    assert not (run_dir / "metrics.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated adapter": (lambda c: _truncate(c / "adapter_model.safetensors"),
                          ["adapter_model.safetensors", "truncated"]),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), ["optimizer.pt", "truncated"]),
    "bit-flipped optimizer": (lambda c: _flip_middle_byte(c / "optimizer.pt"), ["optimizer.pt", "corrupt"]),
    "empty scheduler": (lambda c: (c / "scheduler.pt").write_bytes(b""), ["scheduler.pt", "empty"]),
    "missing trainer state": (lambda c: (c / "trainer_state.json").unlink(), ["missing", "trainer_state.json"]),
    "half-written trainer state": (lambda c: _truncate(c / "trainer_state.json"), ["trainer_state.json", "JSON"]),
    "missing rng state": (lambda c: (c / "rng_state.pth").unlink(), ["missing", "rng_state.pth"]),
    "missing weights": (lambda c: (c / "adapter_model.safetensors").unlink(), ["missing", "model weights"]),
    "wrong step": (lambda c: (c / "trainer_state.json").write_text(
        json.dumps({**json.loads((c / "trainer_state.json").read_text()), "global_step": 3})), ["step 3", "not 4"]),
    # bit rot: same length, intact header, so only the checksums tell
    "bit-flipped adapter weights": (lambda c: _flip_middle_byte(c / "adapter_model.safetensors"),
                                    ["adapter_model.safetensors", "SHA-256"]),
    "bit-flipped rng state": (lambda c: _flip_last_byte(c / "rng_state.pth"), ["rng_state.pth"]),
    "missing checksums": (lambda c: (c / "SHA256SUMS").unlink(), ["missing SHA256SUMS"]),
    "file added after the save": (lambda c: (c / "notes.txt").write_text("x"), ["notes.txt", "not listed"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_checkpoint_damage_is_detected_and_named(case: str, failed_run: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(_run_dir(failed_run) / "checkpoints" / "checkpoint-4", checkpoint)
    assert checkpoint_problem(checkpoint) is None  # the intact copy passes
    damage, phrases = CORRUPTIONS[case]
    damage(checkpoint)
    problem = checkpoint_problem(checkpoint)
    assert problem is not None, f"{case} went unnoticed"
    for phrase in phrases:
        assert phrase in problem, f"{phrase!r} missing from: {problem}"


RESUME_DAMAGE = {  # damage to the newest checkpoint → the file the warning names
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt"),
    "bit-flipped adapter weights": (lambda c: _flip_middle_byte(c / "adapter_model.safetensors"),
                                    "adapter_model.safetensors"),
}


@pytest.mark.parametrize("case", list(RESUME_DAMAGE))
def test_resume_skips_a_corrupt_newest_checkpoint(case: str, failed_run: Path,
                                                  reference_adapter: dict[str, torch.Tensor],
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = _copy(failed_run, tmp_path)
    checkpoints = _run_dir(results) / "checkpoints"
    damage, damaged_file = RESUME_DAMAGE[case]
    damage(checkpoints / "checkpoint-4")
    with (_run_dir(results) / "steps.jsonl").open("a") as steps:
        steps.write('{"step": 6, "lo')  # a log line the killed process did not finish
    with caplog.at_level(logging.WARNING, logger="loralab"):
        metrics = run(compose(*SHORT, runs_dir=results))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint-4" in warning and damaged_file in warning and "not loaded" in warning

    assert metrics["train"]["resumed_from"] == str(checkpoints / "checkpoint-2")
    assert metrics["train"]["steps"] == 6
    assert "checkpoint-4" in metrics["train"]["skipped_checkpoints"][0]
    assert (checkpoints / "corrupt-checkpoint-4" / damaged_file).is_file()  # kept for inspection
    status = read_json(_run_dir(results) / "status.json")
    assert status["state"] == "finished" and status["attempt"] == 2
    logged = [json.loads(line) for line in (_run_dir(results) / "steps.jsonl").read_text().splitlines()]
    assert logged[-1].get("train_runtime") and {3, 4, 5, 6} <= {e["step"] for e in logged if "loss" in e}
    # resuming from the previous good checkpoint loses nothing: the result is the uninterrupted one
    adapter = load_file(_run_dir(results) / "adapter" / "adapter_model.safetensors")
    assert adapter.keys() == reference_adapter.keys()
    assert all(bool((adapter[k] == reference_adapter[k]).all()) for k in adapter)


def test_no_usable_checkpoint_is_an_error_and_force_rerun_starts_over(failed_run: Path, tmp_path: Path) -> None:
    results = _copy(failed_run, tmp_path)
    run_dir = _run_dir(results)
    for step in (2, 4):
        _truncate(run_dir / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors")
    with pytest.raises(CorruptCheckpointError) as info:
        run(compose(*SHORT, runs_dir=results))
    message = str(info.value)
    assert "checkpoint-2" in message and "checkpoint-4" in message and "force_rerun=true" in message
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and status["error"].startswith("CorruptCheckpointError: no usable checkpoint")
    with pytest.raises(CorruptCheckpointError):  # nothing was moved: a plain re-run does not quietly start over
        run(compose(*SHORT, runs_dir=results))

    metrics = run(compose(*SHORT, "force_rerun=true", runs_dir=results))
    assert metrics["train"]["resumed_from"] is None and metrics["train"]["steps"] == 6
    assert read_json(run_dir / "status.json") == {"state": "finished", "attempt": 1, "resumed_from": None}
    assert not list((run_dir / "checkpoints").glob("corrupt-*"))  # the old attempt's files are gone
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps[:FAIL_AT] == [1, 2, 3, 4, 5] and steps.count(1) == 1  # a fresh log, not appended to the old


def test_failure_after_training_resumes_from_the_final_checkpoint(
        failed_run: Path, reference_adapter: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """A crash in evaluation (or a kill there) must not cost the training: the re-run reloads the final
    checkpoint, trains no further step and ends with the same adapter."""
    def broken_evaluation(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full while writing samples")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("loralab.runner.evaluate_suite", broken_evaluation)
        with pytest.raises(OSError):
            run(compose(*SHORT, runs_dir=tmp_path))
    run_dir = _run_dir(tmp_path)
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and status["stage"] == "evaluate" and "disk full" in status["error"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    metrics = run(compose(*SHORT, runs_dir=tmp_path))
    assert metrics["train"]["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-6")
    assert metrics["train"]["steps"] == 6 and metrics["train"]["final_loss_step"] == 6
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert all(bool((adapter[k] == reference_adapter[k]).all()) for k in reference_adapter)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]  # no temporaries


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    # lr=1e30 with no warm-up: step 1 is applied (finite but enormous weights), step 2's loss overflows
    cfg = compose("trainer.learning_rate=1e30", "trainer.warmup_steps=0", "trainer.save_steps=1",
                  *(o for o in SHORT if not o.startswith("trainer.save_steps")), runs_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 2\b") as info:
        run(cfg)
    assert "checkpoint-1" in str(info.value)  # points at what was kept
    run_dir = _run_dir(tmp_path)
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and "at step 2" in status["error"] and status["completed_steps"] == 1
    kept = sorted((run_dir / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["checkpoint-1"]  # nothing was saved after the bad step
    assert checkpoint_problem(kept[-1]) is None
    weights = load_file(kept[-1] / "adapter_model.safetensors")
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values())

"""A sweep with failing cells: the other cells finish, every failure is on disk with its error, the sweep
exits non-zero, and running the same sweep again redoes only what did not finish."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from loralab.io import read_json

# rank=1000 is invalid for the 128-wide tiny model: its cells fail before a run directory exists.
# learning_rate=1e30 (no warm-up) blows up at step 2: that cell fails mid-training, inside its run directory.
SWEEP = ["-m", "trainer.learning_rate=3e-3,1e30", "rank=4,1000", "trainer.warmup_steps=0", "trainer.max_steps=3",
         "trainer.save_steps=1", "trainer.logging_steps=1", "trainer.per_device_train_batch_size=2",
         "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4", "progress=false"]
# one compute thread: the single run below goes side by side with the sweep on a small machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(args: list[str], results: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "run.py", *args, f"paths.results_dir={results}"], cwd=ROOT, env=ENV,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    proc.wait(timeout=400)
    return proc.returncode, log.read_text()


def _cells(sweep_dir: Path) -> dict[tuple[str, str], dict]:
    """Cells of sweep.json keyed by (learning rate, rank) as Hydra wrote the overrides."""
    summary = read_json(sweep_dir / "sweep.json")
    keyed = {}
    for cell in summary["cells"]:
        values = dict(o.split("=", 1) for o in cell["overrides"])
        keyed[(values["trainer.learning_rate"], values["rank"])] = cell
    return keyed


@pytest.mark.slow
def test_failed_cells_are_recorded_and_only_they_rerun(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # The failing cell's configuration on its own, as a single run: one clear error and exit status 2.
    single = _start(["trainer.learning_rate=1e30", "rank=4", *SWEEP[3:]], tmp_path / "single", tmp_path / "single.log")
    code, out = _finish(_start(SWEEP, results, tmp_path / "sweep1.log"), tmp_path / "sweep1.log")
    assert code == 1, out[-3000:]
    assert "3 of 4 cells failed" in out

    (sweep_dir,) = (results / "hydra").iterdir()
    cells = _cells(sweep_dir)
    ok, nan, bad_rank = cells[("0.003", "4")], cells[("1e+30", "4")], cells[("0.003", "1000")]
    assert ok["state"] == "finished" and "error" not in ok
    assert read_json(Path(ok["run_dir"]) / "status.json")["state"] == "finished"

    # failed before its run directory existed: recorded in the sweep, nothing written under runs/
    assert bad_rank["state"] == "failed" and bad_rank["run_dir"] is None
    assert bad_rank["error"].startswith("ConfigError: rank=1000") and "valid ranks are 1..128" in bad_rank["error"]
    assert cells[("1e+30", "1000")]["state"] == "failed"
    assert len(list((results / "runs").iterdir())) == 2
    assert read_json(sweep_dir / "1" / "cell.json") == cells[("0.003", "1000")]  # per-cell record too

    # failed mid-training: its run directory says so, with the step
    assert nan["state"] == "failed" and "NonFiniteLossError" in nan["error"] and "at step 2" in nan["error"]
    status = read_json(Path(nan["run_dir"]) / "status.json")
    assert status["state"] == "failed" and "at step 2" in status["error"] and status["attempt"] == 1
    (kept,) = (Path(nan["run_dir"]) / "checkpoints").iterdir()
    assert kept.name == "checkpoint-1"
    assert all(bool(torch.isfinite(t).all()) for t in load_file(kept / "adapter_model.safetensors").values())

    finished_metrics = (Path(ok["run_dir"]) / "metrics.json").read_bytes()
    code, out = _finish(_start(SWEEP, results, tmp_path / "sweep2.log"), tmp_path / "sweep2.log")
    assert code == 1, out[-3000:]
    assert out.count("already finished, skipping") == 1 and Path(ok["run_dir"]).name in out
    (second_dir,) = [d for d in (results / "hydra").iterdir() if d != sweep_dir]
    again = _cells(second_dir)
    assert again[("0.003", "4")]["state"] == "skipped"
    assert (Path(ok["run_dir"]) / "metrics.json").read_bytes() == finished_metrics  # not recomputed
    assert [again[k]["state"] for k in (("1e+30", "4"), ("0.003", "1000"), ("1e+30", "1000"))] == ["failed"] * 3
    assert read_json(Path(nan["run_dir"]) / "status.json")["attempt"] == 2  # retried, from its last checkpoint

    code, out = _finish(single, tmp_path / "single.log")
    assert code == 2, out[-3000:]
    assert "NonFiniteLossError: non-finite loss or gradient at step 2" in out
    assert "Traceback" not in out  # a user-facing error is one line

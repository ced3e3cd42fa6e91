"""logger=wandb logs without network: offline unless credentials exist; the default needs no wandb at all."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_wandb_logger_writes_an_offline_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc credentials
    result = subprocess.run(
        [sys.executable, "run.py", "logger=wandb", "trainer.max_steps=2", "trainer.logging_steps=1",
         "eval.tasks.0.data.n=4", "progress=false", f"paths.results_dir={tmp_path / 'results'}"],
        cwd=ROOT, env={**env, "LORALAB_CACHE": os.environ["LORALAB_CACHE"]}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    offline_runs = list(run_dir.glob("wandb/offline-run-*"))
    assert offline_runs, f"no offline wandb run under {run_dir}"
    assert any(offline_runs[0].glob("*.wandb"))  # the logged history, to `wandb sync` later

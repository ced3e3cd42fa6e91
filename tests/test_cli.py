"""``python run.py`` as a user types it: a short real run, skip on re-run, and the hub-only failure path."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SHORT = ["trainer.max_steps=4", "trainer.save_steps=2", "trainer.logging_steps=2", "eval.tasks.0.data.n=8",
         "progress=false"]


def _run(*args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args, f"paths.results_dir={results}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_run_py_end_to_end_then_skip(tmp_path: Path) -> None:
    first = _run(*SHORT, results=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir()
    second = _run(*SHORT, results=tmp_path)
    assert second.returncode == 0 and "already finished, skipping" in second.stderr + second.stdout


def test_paper_model_fails_only_where_weights_cannot_be_fetched(tmp_path: Path) -> None:
    result = _run("model=llama3_8b", "rank=32", results=tmp_path)
    message = result.stderr + result.stdout
    assert result.returncode == 2
    assert "meta-llama/Meta-Llama-3-8B" in message and "model.path=/local/dir" in message
    assert not (tmp_path / "runs").exists()  # nothing half-written

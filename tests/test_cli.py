"""``python run.py`` as a user types it: a short real run, skip on re-run, and the hub-only failure path."""
import re
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
    assert (run_dir / "curves.png").is_file()
    second = _run(*SHORT, results=tmp_path)
    assert second.returncode == 0 and "already finished, skipping" in second.stderr + second.stdout


def test_paper_model_fails_only_where_weights_cannot_be_fetched(tmp_path: Path) -> None:
    result = _run("model=llama3_8b", "rank=32", results=tmp_path)
    message = result.stderr + result.stdout
    assert result.returncode == 2
    assert "meta-llama/Meta-Llama-3-8B" in message and "model.path=/local/dir" in message
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_help_describes_loralab() -> None:
    result = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "\nloralab: reproduce, compare and extend LoRA-family fine-tuning methods.\n" in "\n" + text
    assert "python run.py -m method=lora,pissa,sds_lora rank=8,32" in text and "python -m loralab.export" in text
    assert re.search(r"^method: .*\bsds_lora\b", text, re.M) and re.search(r"^model: .*\bllama3_8b\b", text, re.M)
    assert "is powered by Hydra" not in text  # Hydra's generic header is gone; its own help is --hydra-help

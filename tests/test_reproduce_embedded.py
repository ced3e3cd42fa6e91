"""`make reproduce-embedded` in miniature: a Hydra multirun over the experiment's methods, then its table."""
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from conftest import ROOT

SMOKE = ["trainer.max_steps=2", "trainer.save_steps=2", "eval.tasks.0.data.n=4", "progress=false", "smoke=true"]


def test_multirun_sweep_then_table(tmp_path: Path) -> None:
    sweep = subprocess.run([sys.executable, "run.py", "-m", "experiment=embedded", *SMOKE,
                            f"paths.results_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    methods = str(OmegaConf.load(ROOT / "conf/experiment/embedded.yaml").hydra.sweeper.params.method).split(",")
    finished = sorted((tmp_path / "runs").glob("*/metrics.json"))
    assert len(finished) == len(methods)

    built = subprocess.run([sys.executable, "scripts/build_table.py", "--experiment", "embedded",
                            "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "tables"), *SMOKE],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    table = (tmp_path / "tables" / "embedded.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny_lm |")]
    assert sorted(line.split("|")[2].strip() for line in rows) == sorted(methods)
    assert all("(smoke)" in line for line in rows)

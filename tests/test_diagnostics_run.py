"""diagnostics.enabled=true: mechanism metrics reach the step log and metrics.json without changing the run."""
import json
from pathlib import Path

from conftest import compose
from loralab.runner import run

SHORT = ["method=sds_lora", "method.warmup_steps=2", "trainer.max_steps=6", "trainer.save_steps=6",
         "eval.tasks.0.data.n=4", "diagnostics.interval=2"]


def test_diagnostics_are_logged_and_summarised(tmp_path: Path) -> None:
    with_diag = run(compose(*SHORT, "diagnostics.enabled=true", runs_dir=tmp_path / "a"))
    summary = with_diag["diagnostics"]
    assert summary["steps"] == [1, 2, 4, 6]
    for key in ("erank_grad_A", "erank_grad_B", "srank_dW", "align", "norm_dW"):
        assert summary[key] is not None and summary[key]["last"] == summary[key]["last"], key  # not NaN
    assert 0 < summary["align"]["last"] <= 1
    assert summary["sds"]["last"] == 1.0  # after the warm-up the SDS bases are measured, not LoRA's factors

    (run_dir,) = (tmp_path / "a" / "runs").iterdir()
    logged = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "diag/align" in r] == [1, 2, 4, 6]

    without = run(compose(*SHORT, runs_dir=tmp_path / "b"))
    assert without["diagnostics"] is None
    assert without["train"]["final_loss"] == with_diag["train"]["final_loss"]  # measuring changes nothing
    assert without["run"]["config_hash"] == with_diag["run"]["config_hash"]

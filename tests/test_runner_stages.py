"""The recipe's stages: a run that fails inside its run directory records the stage it failed in, by the name
the recipe declares (``TrainEvaluateRecipe.STAGES``), whichever stage that is."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import compose
from loralab.io import read_json
from loralab.runner import TrainEvaluateRecipe, run

# Two cheap steps and four evaluation examples: every stage is reached, none costs much.
SHORT = ["trainer.max_steps=2", "trainer.save_steps=2", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4"]

# A function each stage calls, and only that stage: the failure injected there happens inside the stage.
CALLED_IN = {
    "resume": "loralab.runner.resumable_checkpoint",
    "train": "loralab.runner.train_or_restore",
    "save": "loralab.runner.write_manifest",
    "evaluate": "loralab.runner.evaluate_suite",
}

pytestmark = pytest.mark.usefixtures("one_compute_thread")


def test_every_declared_stage_has_a_failure_point() -> None:
    assert tuple(CALLED_IN) == TrainEvaluateRecipe.STAGES


@pytest.mark.parametrize("stage", list(CALLED_IN))
def test_a_failure_records_the_declared_stage_it_happened_in(stage: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"injected failure in {stage}")

    monkeypatch.setattr(CALLED_IN[stage], broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(compose(*SHORT, runs_dir=tmp_path))
    (run_dir,) = (tmp_path / "runs").iterdir()
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and status["stage"] == stage
    assert status["stage"] in TrainEvaluateRecipe.STAGES
    assert status["error"] == f"RuntimeError: injected failure in {stage}"
    # the steps done before the failure: none until the Trainer exists, both once it has trained
    assert status["completed_steps"] == {"resume": None, "train": 0, "save": 2, "evaluate": 2}[stage]
    assert not (run_dir / "metrics.json").exists()

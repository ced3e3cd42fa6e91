"""Run directories are named by what the run computes; files are replaced atomically."""
from pathlib import Path

import pytest

from conftest import compose
from loralab.io import atomic_write_text
from loralab.rundir import RunDir, config_hash


def test_hash_ignores_where_results_go_and_how_progress_is_shown(tmp_path: Path) -> None:
    base = config_hash(compose())
    assert config_hash(compose("progress=true", runs_dir=tmp_path)) == base
    assert config_hash(compose("logger=wandb")) == base


@pytest.mark.parametrize("override", ["rank=16", "seed=1", "method=pissa", "trainer.learning_rate=1e-4"])
def test_hash_changes_with_anything_that_changes_the_result(override: str) -> None:
    assert config_hash(compose(override)) != config_hash(compose())


def test_run_dir_name_is_readable_and_stable(tmp_path: Path) -> None:
    cfg = compose("rank=4", runs_dir=tmp_path)
    path = RunDir.for_config(cfg).path
    assert path.parent == tmp_path / "runs"
    assert path.name.startswith("tiny_lm-lora-r4-arith_shift-s0-")
    assert RunDir.for_config(compose("rank=4", runs_dir=tmp_path)).path == path


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new and longer")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind

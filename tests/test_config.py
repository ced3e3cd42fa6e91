"""The real config tree composes for every option of every group, and overrides land where they should."""
import subprocess
import sys

import pytest
from hydra.errors import MissingConfigException

from conftest import ROOT, compose

GROUPS = ("model", "method", "dataset", "eval", "trainer", "logger")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_resolves(group: str) -> None:
    from omegaconf import OmegaConf

    for option in _options(group):
        cfg = compose(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        assert cfg[group] is not None


def test_top_level_rank_and_alpha_reach_the_method() -> None:
    cfg = compose("method=sds_lora", "rank=32", "alpha=64")
    assert (cfg.method.rank, cfg.method.alpha) == (32, 64)


def test_eval_suite_follows_the_dataset_unless_overridden() -> None:
    assert compose("model=tiny_vit", "dataset=digits_shift").eval.name == "digits_shift"
    assert compose("dataset=metamathqa").eval.name == "metamathqa"


def test_method_dataset_pair_overrides_hyperparameters() -> None:
    assert compose("method=full_ft").trainer.learning_rate == pytest.approx(5e-4)
    assert compose("method=lora").trainer.learning_rate == pytest.approx(3e-3)


@pytest.mark.parametrize(("group", "some_valid"), [("method", {"lora", "sds_lora"}),
                                                   ("model", {"tiny_lm", "llama3_8b"}),
                                                   ("dataset", {"arith_shift", "metamathqa"}),
                                                   ("eval", {"arith_shift", "commonsense170k"})])
def test_unknown_option_lists_the_valid_ones(group: str, some_valid: set[str]) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose(f"{group}=not_a_{group}")
    assert f"not_a_{group}" in str(info.value)
    assert some_valid <= set(info.value.options or [])


def test_paper_models_declare_hub_ids_and_targets() -> None:
    for name in ("llama3_8b", "gemma_2b", "llama2_7b", "vit_base", "vit_large", "deberta_v3_base"):
        model = compose(f"model={name}").model
        assert model.hub_id and "/" in model.hub_id and model.target_modules, name


def test_cfg_job_prints_the_resolved_config() -> None:
    out = subprocess.run([sys.executable, "run.py", "--cfg", "job", "method=sds_lora", "rank=32"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "loralab.methods.sds_lora" in out and "rank: 32" in out

"""Run identity of the evaluation suites: a suite's answer reading written as a filter chain hashes as the keys
it replaced, so every run declared before the chain keeps its hash and its run directory.

The hashes below were computed before the chains existed (``answer_pattern``/``occurrence``/``fallback``/
``normalizer`` in the suite YAMLs): the embedded default and one cell per suite, on the paper models.
"""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose
from loralab.rundir import config_hash

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
VISION = ["cars", "cub200", "dtd", "food101", "sun397"]
CELLS = {
    "embedded_default": [],
    "arith_shift+lm_eval": ["eval.engine=lm_eval"],
    "metamathqa": ["model=llama3_8b", "dataset=metamathqa"],
    "metamathqa+native": ["model=llama3_8b", "dataset=metamathqa", "eval.engine=native"],
    "metamathqa_mathverify": ["model=llama3_8b", "dataset=metamathqa", "eval=metamathqa_mathverify"],
    "code_feedback": ["model=llama3_8b", "dataset=code_feedback", "eval.allow_code_execution=true"],
    "commonsense170k": ["model=llama3_8b", "dataset=commonsense170k"],
    "commonsense170k+native": ["model=llama3_8b", "dataset=commonsense170k", "eval.engine=native"],
    "commonsense8_loglik": ["model=llama3_8b", "dataset=commonsense170k", "eval=commonsense8_loglik"],
    **{f"glue_{t}": ["model=deberta_v3_base", f"dataset=glue_{t}"] for t in GLUE},
    **{v: ["model=vit_base", f"dataset={v}"] for v in VISION},
    "digits_shift": ["model=tiny_vit", "dataset=digits_shift"],
}
PINNED = {
    "embedded_default": "e433be6174",
    "arith_shift+lm_eval": "aedd0cf5a6",
    "metamathqa": "40198ef241",
    "metamathqa+native": "a349e4fe70",
    "metamathqa_mathverify": "52d32b5213",
    "code_feedback": "044c00796c",
    "commonsense170k": "3da50ab408",
    "commonsense170k+native": "cf40f6bf8e",
    "commonsense8_loglik": "9052b4d45e",
    "glue_cola": "1faa55aff0",
    "glue_sst2": "a4d8a10e64",
    "glue_mrpc": "4f66583104",
    "glue_qqp": "3d86c81191",
    "glue_stsb": "b3b885af2d",
    "glue_mnli": "1fc51138d8",
    "glue_qnli": "ef2a97286f",
    "glue_rte": "01d51bd75d",
    "cars": "31cf8e1dfa",
    "cub200": "6d21b36cb1",
    "dtd": "9d6e13dd73",
    "food101": "bfa125f321",
    "sun397": "df06632388",
    "digits_shift": "f7dbc13cc3",
}


@pytest.mark.parametrize("cell", list(CELLS))
def test_hashes_of_every_suite_are_those_before_filter_chains(cell: str) -> None:
    assert config_hash(compose(*CELLS[cell]), processes=1) == PINNED[cell]


def _with_task(cfg, **changes):
    """The resolved config with the first eval task's keys changed (``None``: removed)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    task = resolved["eval"]["tasks"][0]
    for key, value in changes.items():
        task.pop(key, None) if value is None else task.__setitem__(key, value)
    return OmegaConf.create(resolved)


def test_a_chain_hashes_as_its_legacy_keys_only_where_it_is_one() -> None:
    cfg = compose()
    base = config_hash(cfg, processes=1)
    regex, normalize = OmegaConf.to_container(cfg.eval.tasks[0].filters, resolve=True)
    assert config_hash(_with_task(cfg), processes=1) == base
    legacy = _with_task(cfg, filters=None, answer_pattern=regex["pattern"], fallback=regex["fallback"],
                        normalizer=normalize["how"])
    assert config_hash(legacy, processes=1) == base                      # the keys the chain replaced
    assert config_hash(_with_task(cfg, filters=[regex, {**normalize, "how": "text"}]), processes=1) != base
    assert config_hash(_with_task(cfg, filters=[{**regex, "occurrence": "first"}, normalize]), processes=1) != base
    # chains the four keys cannot express hash as written: each its own run
    reordered = config_hash(_with_task(cfg, filters=[normalize, regex]), processes=1)
    shorter = config_hash(_with_task(cfg, filters=[regex]), processes=1)
    assert len({base, reordered, shorter}) == 3

"""Recipes the SDS-LoRA tables claim to follow: Table 1 is the DoRA commonsense recipe, and SDS-LoRA runs at a
rate matched to LoRA's effective step, not at LoRA's rate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import compose
from loralab.instantiate import build
from loralab.lr_source import labelled_lr, lr_problem

# The DoRA commonsense recipe, as its reference code states it (NVlabs/DoRA, commonsense_reasoning/):
# llama3_8B_DoRA.sh passes --batch_size 16 --num_epochs 3 --learning_rate 1e-4 --cutoff_len 256
# --target_modules '["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]' with r, alpha = 32, 64 (its README:
# "sh llama3_8B_DoRA_r.sh 32 64 ..."); finetune.py defaults lora_dropout=0.05 and passes warmup_steps=100 to a
# TrainingArguments without lr_scheduler_type (the Trainer's linear default) and weight_decay=0.0.
DORA_COMMONSENSE = {"alpha_per_rank": 2, "lora_dropout": 0.05, "batch_size": 16, "num_epochs": 3,
                    "warmup_steps": 100, "lr_scheduler_type": "linear", "weight_decay": 0.0, "cutoff_len": 256,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
                    "dora_lr_llama3_8b": 1e-4, "lora_lr_llama3_8b_r32": 3e-4}


@pytest.mark.parametrize("method", ["lora", "dora", "sds_lora"])
@pytest.mark.parametrize("rank", [8, 32])
def test_sds_table1_follows_the_dora_commonsense_recipe(rank: int, method: str) -> None:
    cfg = compose("experiment=sds_table1", f"method={method}", f"rank={rank}")
    ref = DORA_COMMONSENSE
    assert cfg.alpha == ref["alpha_per_rank"] * rank
    assert cfg.method.dropout == ref["lora_dropout"] and list(cfg.method.target_modules) == ref["target_modules"]
    trainer = cfg.trainer
    assert trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps == ref["batch_size"]
    assert (trainer.num_train_epochs, trainer.warmup_steps, trainer.lr_scheduler_type, trainer.weight_decay) == (
        ref["num_epochs"], ref["warmup_steps"], ref["lr_scheduler_type"], ref["weight_decay"])
    assert cfg.dataset.max_length == ref["cutoff_len"]
    if method == "lora":                          # alpha = 2r: LoRA's s = alpha / r = 2 at every rank
        assert build(cfg.method, _convert_="all").scaling == 2.0
        assert cfg.trainer.learning_rate == ref["lora_lr_llama3_8b_r32"]
    if method == "dora":
        assert cfg.trainer.learning_rate == ref["dora_lr_llama3_8b"]


def test_sds_table1_names_a_rank_without_its_alpha_loudly() -> None:
    assert compose("experiment=sds_table1", "rank=16").alpha is None          # the runner refuses alpha=None
    assert compose("experiment=sds_table1", "rank=16", "alpha=32").alpha == 32


def test_effective_step_ratio_behind_the_sds_rate() -> None:
    """One sign-like AdamW step at equal s: ‖Q_B·dA + dB·Q_Aᵀ‖_F / ‖dB·A‖_F = sqrt(6) for square layers and a
    kaiming-uniform A (variance 1/(3n)), whatever the rank (the derivation in sds_lora_metamathqa.yaml)."""
    rng = np.random.default_rng(0)
    m = n = 1024
    for r in (8, 32):
        a = rng.uniform(-1 / math.sqrt(n), 1 / math.sqrt(n), (r, n))
        lora = np.linalg.norm(np.sign(rng.standard_normal((m, r))) @ a)
        q_b, q_a = np.linalg.qr(rng.standard_normal((m, r)))[0], np.linalg.qr(rng.standard_normal((n, r)))[0]
        sds = np.linalg.norm(q_b @ np.sign(rng.standard_normal((r, n))) + np.sign(rng.standard_normal((m, r))) @ q_a.T)
        assert sds / lora == pytest.approx(math.sqrt(6), rel=0.03)


@pytest.mark.parametrize(("table", "dataset", "sds"), [
    ("sds_table1", "commonsense170k", "sds_lora"), ("sds_table2", "metamathqa", "sds_lora"),
    ("sds_table2", "code_feedback", "sds_lora"), ("sds_table3", "cars", "sds_lora"),
    ("sds_table4", "metamathqa", "sds_lora"), ("sds_table5", "metamathqa", "sds_ortho"),
])
@pytest.mark.parametrize("rank", [8, 32])
def test_sds_lora_runs_at_loras_rate_over_its_step_ratio(table: str, dataset: str, sds: str, rank: int) -> None:
    lora = compose(f"experiment={table}", "method=lora", f"dataset={dataset}", f"rank={rank}")
    cfg = compose(f"experiment={table}", f"method={sds}", f"dataset={dataset}", f"rank={rank}")
    s_lora = build(lora.method, _convert_="all").scaling
    s_sds = build(cfg.method, _convert_="all").scaling
    assert s_sds / s_lora == pytest.approx(math.sqrt(rank))                  # alpha/sqrt(r) over alpha/r
    step_ratio = math.sqrt(6) * s_sds / s_lora
    assert lora.trainer.learning_rate / cfg.trainer.learning_rate == pytest.approx(step_ratio, rel=0.05)
    source = labelled_lr(cfg)
    assert source.label == "INFERRED" and "sqrt(6 r)" in source.note and lr_problem(cfg) is None

"""Recipes the SDS-LoRA tables claim to follow: Table 1 is the DoRA commonsense recipe."""
from __future__ import annotations

import pytest

from conftest import compose
from loralab.instantiate import build

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

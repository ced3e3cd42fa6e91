"""LoRA parameter counts computed from model dimensions match the rank article's numbers to the digit."""
from __future__ import annotations

import pytest
from transformers import LlamaConfig

from loralab.errors import ConfigError
from loralab.tables.rank_params import (
    article_columns,
    article_table,
    layer_shapes_from_config,
    lora_params,
    max_rank_for_budget,
    model_lora_params,
    params_per_rank,
    render_rank_table,
)
from loralab.tables.reference import REFERENCE_DIR, load_reference

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 num_hidden_layers=32)


@pytest.fixture(scope="module")
def config() -> LlamaConfig:
    return LlamaConfig(**LLAMA2_7B)


@pytest.fixture(scope="module")
def reference():
    return load_reference(REFERENCE_DIR / "rank_params.yaml")


def test_single_matrix_counts():
    assert lora_params(4096, 4096, 8) == 65_536
    assert lora_params(4096, 11008, 4) == 60_416
    assert lora_params(11008, 4096, 64) == 966_656
    assert lora_params(4096, 4096, 0) == 0
    with pytest.raises(ConfigError, match="r must be"):
        lora_params(4096, 4096, -1)


def test_shapes_from_llama_config(config):
    shapes = layer_shapes_from_config(config)
    assert shapes["q_proj"] == (4096, 4096) and shapes["o_proj"] == (4096, 4096)
    assert shapes["up_proj"] == (4096, 11008) and shapes["down_proj"] == (11008, 4096)
    # a plain dict and grouped-query attention (LLaMA3-8B-like): k/v project to kv_heads * head_dim
    gqa = layer_shapes_from_config({**LLAMA2_7B, "num_key_value_heads": 8, "intermediate_size": 14336})
    assert gqa["k_proj"] == (4096, 1024) and gqa["v_proj"] == (4096, 1024) and gqa["gate_proj"] == (4096, 14336)


def test_qv_on_32_layers(config):
    assert params_per_rank(config, ["q_proj", "v_proj"]) == 524_288
    assert model_lora_params(config, ["q_proj", "v_proj"], 32, 8) == 4_194_304
    assert model_lora_params(config, ["q", "v"], r=8) == 4_194_304  # short names, n_layers from the config
    shapes = layer_shapes_from_config(config)
    assert model_lora_params(shapes, ["q_proj", "v_proj"], 32, 16) == 524_288 * 16
    assert model_lora_params(dict(LLAMA2_7B), ["q_proj", "v_proj"], r=64) == 524_288 * 64


def test_budget_example(config):
    r = max_rank_for_budget(10_000_000, config, ["q_proj", "v_proj"])
    assert r == 19
    assert model_lora_params(config, ["q_proj", "v_proj"], r=r) <= 10_000_000
    assert model_lora_params(config, ["q_proj", "v_proj"], r=r + 1) > 10_000_000
    assert max_rank_for_budget(524_287, config, ["q_proj", "v_proj"]) == 0


def test_computed_table_matches_reference_to_the_digit(config, reference):
    hp = {k: v["value"] for k, v in reference.hyperparameters.items()}
    assert {k: hp[k] for k in LLAMA2_7B} == LLAMA2_7B
    computed = article_table(config, (4, 8, 16, 64), hp["targets"], hp["budget"])
    assert list(computed) == [r["scope"] for r in reference.rows()]
    assert article_columns((4, 8, 16, 64), hp["budget"]) == reference.columns
    known = reference.known_cells()
    assert len(known) >= 4
    for cell in known:
        assert computed[cell.row["scope"]][cell.column] == int(cell.value), cell
    assert computed["attention_matrix"]["r=8"] == 65_536
    assert computed["q_v_all_layers"]["r=8"] == 4_194_304
    assert computed["q_v_all_layers"]["max_rank_budget_10M"] == 19


def test_counts_agree_with_peft_on_a_tiny_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=3, vocab_size=32)
    targets = ["q_proj", "k_proj", "o_proj", "down_proj"]
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == model_lora_params(cfg, targets, r=4)


def test_markdown_rendering(config):
    text = render_rank_table(config)
    assert "attention 4096×4096, MLP 11008×4096" in text
    assert "| | r=4 | r=8 | r=16 | r=64 | params_per_rank | max_rank_budget_10M |" in text
    assert "| q_v_all_layers | 2,097,152 | 4,194,304 | 8,388,608 | 33,554,432 | 524,288 | 19 |" in text
    assert "| attention_matrix | 32,768 | 65,536 | 131,072 | 524,288 | 8,192 | 1,220 |" in text


@pytest.mark.parametrize("call,fragment", [
    (lambda c: model_lora_params(c, ["q_proj", "x_proj"], r=8), "unknown target module(s) ['x_proj']"),
    (lambda c: model_lora_params(layer_shapes_from_config(c), ["q_proj"], None, 8), "n_layers is required"),
    (lambda c: model_lora_params({"hidden_size": 4096}, ["q_proj"], r=8), "intermediate_size"),
    (lambda c: max_rank_for_budget(-5, c, ["q_proj"]), "budget"),
    (lambda c: model_lora_params(c, [], r=8), "targets is empty"),
])
def test_errors_name_the_problem(config, call, fragment):
    with pytest.raises(ConfigError) as err:
        call(config)
    assert fragment in str(err.value)

"""Every paper model of ``conf/model/`` built from its real architecture (its published config.json facts, the
installed transformers' classes, the ``meta`` device: shapes without weights) and checked against what the
project assumes about it: the methods' target modules name real layers, the planner's parameter counts are the
real model's, and LoRA trains the number of parameters the papers report. A transformers release that renames
layers or changes a block fails here, not in a paper table."""
from __future__ import annotations

import re
from functools import lru_cache

import pytest
import yaml
from omegaconf import OmegaConf
from torch import nn

from conftest import ROOT, compose
from loralab.instantiate import build
from loralab.methods.base import count_trainable, matching_linears
from loralab.methods.lora import LoRA
from loralab.models.hub_configs import HUB_CONFIGS, HUB_IDS, build_on_meta
from loralab.planning.architectures import ARCHITECTURES
from loralab.planning.plan import trainable_params

MODEL_DIR = ROOT / "conf" / "model"
PAPER_MODELS = sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if OmegaConf.load(p).get("hub_id"))
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
# classes of a data set each classifier is used with (Stanford Cars for the ViTs, a binary GLUE task)
NUM_LABELS = {"image_classification": 196, "sequence_classification": 2}


def _model_cfg(name: str):
    return OmegaConf.load(MODEL_DIR / f"{name}.yaml")


@lru_cache(maxsize=None)
def _meta_model(name: str) -> nn.Module:
    kind = str(_model_cfg(name).kind)
    return build_on_meta(name, kind, NUM_LABELS.get(kind))


def _num_labels(name: str) -> int:
    return NUM_LABELS.get(str(_model_cfg(name).kind), 0)


def _block_linears(model: nn.Module) -> dict[str, list[tuple[int, int]]]:
    """(in, out) of the linear layers of the first block, by leaf name."""
    found: dict[str, list[tuple[int, int]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.search(r"\.(layers|layer)\.0\.", name):
            found.setdefault(name.rsplit(".", 1)[-1], []).append((module.in_features, module.out_features))
    return {k: sorted(v) for k, v in found.items()}


def test_every_paper_model_has_its_architecture_on_record() -> None:
    assert PAPER_MODELS == sorted(HUB_CONFIGS)
    for name in PAPER_MODELS:
        assert _model_cfg(name).hub_id == HUB_IDS[name] == ARCHITECTURES[name].hub_id


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_planner_counts_equal_the_real_architecture(name: str) -> None:
    model, arch = _meta_model(name), ARCHITECTURES[name]
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == arch.total_params(_num_labels(name))
    assert _block_linears(model) == {k: sorted(v) for k, v in arch.layer_linears().items()}
    assert sum(1 for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == arch.hidden
               and m.out_features == arch.intermediate) == arch.layers * (2 if arch.block == "llama" else 1)


KNOWN_TOTALS = {"llama3_8b": 8_030_261_248, "llama2_7b": 6_738_415_616, "gemma_2b": 2_506_172_416,
                "vit_base": 85_798_656, "vit_large": 303_301_632, "deberta_v3_base": 184_422_144}


def test_totals_are_the_published_model_sizes() -> None:
    """Without classifier heads: LLaMA-3-8B 8.03B, LLaMA-2-7B 6.74B, Gemma-2B 2.51B, ViT-B/16 86M, ViT-L/16
    303M, DeBERTa-v3-base 184M."""
    assert {name: arch.total_params() for name, arch in ARCHITECTURES.items()} == KNOWN_TOTALS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_targets_real_layers_of_every_paper_model(method: str) -> None:
    cfg = compose(f"method={method}")
    instance = build(cfg.method, _convert_="all")
    for name in PAPER_MODELS:
        model_cfg = _model_cfg(name)
        targets = list(cfg.method.get("target_modules") or model_cfg.target_modules)
        model = _meta_model(name)
        for target in targets:  # each name must match, not just one of them
            assert matching_linears(model, [target]), f"{method} on {name}: {target!r} matches no linear layer"
        instance.validate(model, targets)   # the runner's own check (rank within every adapted layer too)
        for module in model_cfg.get("modules_to_save") or []:
            assert any(n.rsplit(".", 1)[-1] == module for n, _ in model.named_modules()), (name, module)


def _paper_params(table: str) -> dict[str, str]:
    spec = yaml.safe_load((ROOT / "results" / "paper" / f"{table}.yaml").read_text())
    return spec["hyperparameters"]["params"]["value"]


def _rounds_to(count: int, printed: str) -> bool:
    """``printed`` as the paper prints it: '1.33M' is 1.33 × 10⁶ to the digits shown."""
    number = printed.rstrip("MB")
    scale = {"M": 1e6, "B": 1e9}[printed[-1]]
    digits = len(number.split(".")[1]) if "." in number else 0
    return round(count / scale, digits) == float(number)


@pytest.mark.parametrize("name, rank, table, key", [
    ("deberta_v3_base", 8, "loram_table2", "lora_family"),   # LoRAM Table 2: "1.33M"
    ("llama2_7b", 16, "loram_table1", "r16"),                # LoRAM Table 1: "40M"
    ("llama2_7b", 128, "loram_table1", "r128"),              # LoRAM Table 1: "320M"
])
def test_lora_trains_what_the_paper_reports(name: str, rank: int, table: str, key: str) -> None:
    cfg = compose(f"model={name}", "method=lora", f"rank={rank}")
    model_cfg = _model_cfg(name)
    targets, saved = list(model_cfg.target_modules), list(model_cfg.modules_to_save or [])
    peft_model = build(cfg.method, _convert_="all").prepare(build_on_meta(name, str(model_cfg.kind),
                                                                          NUM_LABELS.get(str(model_cfg.kind))),
                                                            targets, saved)
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n)
    assert _rounds_to(adapter, _paper_params(table)[key]), (adapter, _paper_params(table)[key])
    # the planner counts the same adapter, plus the heads that train in full (classifier, pooler)
    arch = ARCHITECTURES[name]
    assert trainable_params(arch, LoRA(rank=rank), targets, _num_labels(name), saved)[0] == count_trainable(peft_model)


@pytest.mark.parametrize("name, table", [("llama2_7b", "loram_table1"), ("deberta_v3_base", "loram_table2")])
def test_full_fine_tuning_trains_the_model_size_the_paper_reports(name: str, table: str) -> None:
    total = sum(p.numel() for p in _meta_model(name).parameters())
    assert _rounds_to(total, _paper_params(table)["full_ft"])   # "6738M", "184M"

"""On a float64 model, residual initialisations and merges are exact to float64 rounding: their linear algebra runs
in ``promote_types(weight dtype, float32)``, never in float32 alone (which would leave errors of ~1e-7)."""
from __future__ import annotations

import pytest
import torch

from loralab.methods.base import Method
from loralab.methods.lora import LoRA
from loralab.methods.lora_ga import LoRAGA
from loralab.methods.loram import LoRAM
from loralab.methods.milora import MiLoRA
from loralab.methods.residual import lora_linear_layers
from loralab.methods.sds_lora import SDSLoRA, sds_layers
from loralab.models.tiny import tiny_llama

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
EXACT = 1e-12  # float64 rounding of these small models is ~1e-16; float32 anywhere on the path gives ~1e-7


def _ids() -> torch.Tensor:
    return torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(7))


def _calibration():
    for seed in (1, 2):
        ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


METHODS = {
    "lora": lambda: LoRA(rank=4, alpha=8.0),
    "milora": lambda: MiLoRA(rank=4, alpha=8.0),
    "lora_ga": lambda: LoRAGA(rank=4, alpha=8.0, grad_batches=2),
    "loram": lambda: LoRAM(rank=4, alpha=8.0),
    "sds_lora": lambda: SDSLoRA(rank=4, alpha=8.0),
}


def _prepared(name: str) -> tuple[Method, torch.nn.Module]:
    method = METHODS[name]()
    model = tiny_llama(seed=0).double()
    method.validate(model, TARGETS)
    return method, method.prepare(model, TARGETS, None, _calibration)


@pytest.mark.parametrize("name", ["milora", "lora_ga", "loram"])
def test_residual_init_leaves_a_float64_model_unchanged_to_float64_rounding(name: str) -> None:
    _, model = _prepared(name)
    layers = list(lora_linear_layers(model))
    assert layers and all(layer.get_base_layer().weight.dtype == torch.float64 for _, layer in layers)
    with torch.no_grad():
        before = tiny_llama(seed=0).double()(input_ids=_ids()).logits
        after = model(input_ids=_ids()).logits
    assert _rel(after, before) < EXACT


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merge_of_a_float64_model_is_exact_to_float64_rounding(name: str) -> None:
    method, model = _prepared(name)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in lora_linear_layers(model):  # a non-trivial adapter: B = 0 would merge exactly anyway
            for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if name == "sds_lora":  # the SDS phase: ΔW = s·[Q_B | B][A ; Q_Aᵀ] with the fp32-stored bases
            for _, layer, adapter in sds_layers(model):
                layer.lora_variant[adapter].transition(layer, adapter)
        unmerged = model(input_ids=_ids()).logits
        untouched = tiny_llama(seed=0).double()(input_ids=_ids()).logits
        merged = method.merge(model)(input_ids=_ids()).logits
    assert _rel(unmerged, untouched) > 1e-2              # the adapter changes the model
    assert _rel(merged, unmerged) < EXACT

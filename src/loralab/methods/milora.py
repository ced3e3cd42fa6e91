"""MiLoRA (Wang et al., NAACL 2025): PiSSA's init with the *bottom*-r (minor) singular triplets of W.

What makes it MiLoRA: ``W = U S Vᵀ``; ``A0 = diag(√(S_min/s)) V_minᵀ``, ``B0 = U_min diag(√(S_min/s))`` with the r
smallest singular values (divided by s as in the authors' ``svd_init.py`` and PEFT's PiSSA), and the frozen
weight becomes ``W − s·B0A0 = W − U_min S_min V_minᵀ``: the principal components stay frozen. Not in PEFT
(PEFT's ``"mica"`` is a different method), so the factors are installed on a PEFT LoRA model after creation;
saving converts to a plain LoRA on the pretrained weights (see :class:`ResidualLoRA`).
"""
from __future__ import annotations

from typing import ClassVar
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import CalibrationBatches
from loralab.methods.residual import ResidualLoRA, init_dtype, lora_linear_layers, set_residual_init


@torch.no_grad()
def milora_factors(weight: torch.Tensor, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) from the ``rank`` smallest singular triplets of ``weight`` (out × in), in fp32 or wider (fp64)."""
    U, S, Vh = torch.linalg.svd(weight.to(init_dtype(weight)), full_matrices=False)
    root = torch.sqrt(S[-rank:] / scaling)
    lora_A = root[:, None] * Vh[-rank:]
    lora_B = U[:, -rank:] * root[None, :]
    return lora_A, lora_B


@dataclass
class MiLoRA(ResidualLoRA):
    name: str = "milora"
    init_lora_weights: bool | str = False  # PEFT leaves A, B alone; create_peft_model installs MiLoRA's factors
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        config = super().lora_config(target_modules, modules_to_save)
        config.init_lora_weights = False
        return config

    def create_peft_model(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None,
        calibration: CalibrationBatches | None,
    ) -> PeftModel:
        peft_model = get_peft_model(model, self.lora_config(target_modules, modules_to_save))
        for name, layer in lora_linear_layers(peft_model):
            lora_A, lora_B = milora_factors(layer.get_base_layer().weight, layer.r["default"], layer.scaling["default"])
            if not torch.any(lora_A != 0):
                # A weight of rank < min(n, m) − r + 1 has zero minor values: A0 = B0 = 0 would never train.
                raise ConfigError(
                    f"milora: the {layer.r['default']} smallest singular values of '{name}' are all zero, so "
                    "A0 = B0 = 0 and the adapter cannot learn; use a method with a non-degenerate init for this layer"
                )
            self.step0_errors[name] = set_residual_init(layer, lora_A, lora_B)
        return peft_model

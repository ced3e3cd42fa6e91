"""LoRA+ (Hayou, Ghosh, Yu, ICML 2024): LoRA trained with a larger learning rate on B, η_B = λ·η_A.

Only the optimiser differs from LoRA: PEFT's ``create_loraplus_optimizer`` puts every ``lora_B`` weight (and,
as PEFT does, every trainable 1-D parameter such as biases) in a group with lr·λ, LoRA embeddings at
``lr_embedding``, the rest (A) at lr. The runner's weight decay is passed as PEFT's ``loraplus_weight_decay``
(PEFT would otherwise silently use 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.lora import LoRA


@dataclass
class LoRAPlus(LoRA):
    name: str = "lora_plus"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    # λ = η_B / η_A. LoRA+ recommends 2^4 = 16; the LoRAM paper's baseline reads η_B = 4·η_A (INFERRED,
    # docs/methods/lora_plus.md#ratio-in-loram).
    loraplus_lr_ratio: float = 16.0
    # Learning rate of LoRA factors on embedding layers (PEFT's default).
    loraplus_lr_embedding: float = 1e-6

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        ratio = self.loraplus_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ConfigError(
                f"method.loraplus_lr_ratio={ratio!r} is invalid: it must be > 0 (LoRA+ uses >= 1, e.g. 16; LoRAM 4)"
            )
        emb = self.loraplus_lr_embedding
        if isinstance(emb, bool) or not isinstance(emb, (int, float)) or not emb > 0:
            raise ConfigError(f"method.loraplus_lr_embedding={emb!r} is invalid: it must be > 0 (default 1e-6)")

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return create_loraplus_optimizer(
            model,
            optimizer_cls=torch.optim.AdamW,
            lr=lr,
            loraplus_lr_ratio=float(self.loraplus_lr_ratio),
            loraplus_lr_embedding=float(self.loraplus_lr_embedding),
            loraplus_weight_decay=weight_decay,
        )

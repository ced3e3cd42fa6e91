"""rsLoRA (Kalajdzievski, 2023): LoRA with the rank-stabilised scaling s = alpha/√r instead of alpha/r.

That single change keeps forward/backward magnitudes independent of the rank; PEFT's ``use_rslora=True``.
Mapping to the LoRAM paper's "RsLoRA, α = √r" (total multiplier √r): set ``alpha = rank`` (INFERRED,
docs/methods/rslora.md#loram-mapping).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from loralab.errors import ConfigError
from loralab.methods.lora import LoRA


@dataclass
class RsLoRA(LoRA):
    name: str = "rslora"
    use_rslora: bool = True
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        if self.use_rslora is not True:
            raise ConfigError(f"method.use_rslora={self.use_rslora!r} is invalid for rslora: it must be true")

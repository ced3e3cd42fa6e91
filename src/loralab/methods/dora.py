"""DoRA (Liu et al., ICML 2024): W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_c with a trainable magnitude vector m.

What makes it DoRA: the magnitude/direction split; m starts at the row norms of W (one entry per output unit),
so W' = W at step 0, and the norm is detached in the backward pass (paper §4.3). PEFT's ``use_dora=True`` does
all of this; the saved adapter holds m next to A and B.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from loralab.errors import ConfigError
from loralab.methods.lora import LoRA


@dataclass
class DoRA(LoRA):
    name: str = "dora"
    use_dora: bool = True
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})

    # costs: docs/methods/dora.md#cost-model
    def trainable_params(self, in_features: int, out_features: int, rank: int) -> int:
        """A, B and the magnitude vector m, one entry per output feature."""
        return super().trainable_params(in_features, out_features, rank) + out_features

    def step_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """B·A once per forward for the column norm ‖W + s·BA‖_c (detached: no backward), 2·out·in·rank."""
        return 2 * out_features * in_features * rank

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        if self.use_dora is not True:
            raise ConfigError(f"method.use_dora={self.use_dora!r} is invalid for dora: it must be true")

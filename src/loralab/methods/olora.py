"""OLoRA (Büyükakyüz, 2024): LoRA initialised from the QR decomposition of W.

What makes it OLoRA: ``W = QR`` (reduced), ``B0 = Q[:, :r]`` (orthonormal columns), ``A0 = R[:r, :]``, and the
frozen weight becomes ``W − s·B0A0`` (no division by s, unlike PiSSA). PEFT's ``init_lora_weights="olora"``;
saving converts to a plain LoRA on the pretrained weights (see :class:`ResidualLoRA`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import LoraConfig

from loralab.methods.residual import ResidualLoRA


@dataclass
class OLoRA(ResidualLoRA):
    name: str = "olora"
    init_lora_weights: bool | str = "olora"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        config = super().lora_config(target_modules, modules_to_save)
        config.init_lora_weights = "olora"
        return config

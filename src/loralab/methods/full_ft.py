"""Full fine-tuning: every parameter trains; the reference point of every table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_model, save_model
from torch import nn

from loralab.methods.base import CalibrationBatches, LinearFlops, Method


@dataclass
class FullFineTuning(Method):
    name: str = "full_ft"
    trains_base_weights: ClassVar[bool] = True
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"dropout", "target_modules"})

    # costs: docs/methods/full_ft.md#cost-model (the planner counts the whole model, as trains_base_weights says)
    def trainable_params(self, in_features: int, out_features: int, rank: int) -> int:
        return in_features * out_features

    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        """No adapter path: the weight gradient is part of the (trainable) base product the caller counts."""
        return LinearFlops(0, 0)

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        """Rank, alpha and target modules do not apply to full fine-tuning."""

    def prepare(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None = None,
        calibration: CalibrationBatches | None = None,
    ) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> Path:
        path = Path(out_dir) / "model.safetensors"
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_model(model, str(path))  # handles tied weights (e.g. embeddings shared with the LM head)
        return path

    def load(self, model: nn.Module, weights_dir: Path) -> nn.Module:
        load_model(model, str(Path(weights_dir) / "model.safetensors"))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model

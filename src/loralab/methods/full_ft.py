"""Full fine-tuning: every parameter trains; the reference point of every table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from loralab.methods.base import CalibrationBatches, Method


@dataclass
class FullFineTuning(Method):
    name: str = "full_ft"

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

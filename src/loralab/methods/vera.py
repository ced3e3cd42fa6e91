"""VeRA (Kopiczko, Blankevoort, Asano, ICLR 2024) through PEFT's ``VeraConfig``: W_eff = W + Λ_b·B·Λ_d·A.

A (r×in) and B (out×r) are random (Kaiming-uniform from ``projection_prng_key``), frozen, and shared by every
adapted layer (PEFT sizes them to the largest adapted layer and slices); each layer trains only the scaling
vectors b (out, initialised to 0, so the model is unchanged at step 0) and d (r, initialised to ``d_initial``).
VeRA has no alpha: ``alpha`` is accepted for a uniform command line and not used. docs/methods/vera.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from peft import PeftModel, VeraConfig, get_peft_model
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import CalibrationBatches, LinearFlops, Method


@dataclass
class VeRA(Method):
    name: str = "vera"
    d_initial: float = 0.1          # PEFT's default for d; b starts at 0
    projection_prng_key: int = 0    # seeds the shared A, B

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        if not isinstance(self.projection_prng_key, int) or isinstance(self.projection_prng_key, bool):
            raise ConfigError(f"method.projection_prng_key={self.projection_prng_key!r} is invalid: it must be an "
                              "integer")

    def prepare(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str] | None = None,
                calibration: CalibrationBatches | None = None) -> nn.Module:
        config = VeraConfig(r=self.rank, target_modules=list(target_modules), vera_dropout=self.dropout,
                            d_initial=self.d_initial, projection_prng_key=self.projection_prng_key,
                            save_projection=True,  # the adapter file carries A and B: reloading needs no PRNG
                            modules_to_save=list(modules_to_save) if modules_to_save else None)
        return get_peft_model(model, config)

    def save(self, model: nn.Module, out_dir: Path) -> Path:
        assert isinstance(model, PeftModel), "VeRA.save expects the PeftModel returned by prepare()"
        model.save_pretrained(str(out_dir), safe_serialization=True)
        return Path(out_dir) / "adapter_model.safetensors"

    def load(self, model: nn.Module, weights_dir: Path) -> nn.Module:
        return PeftModel.from_pretrained(model, str(weights_dir))

    def merge(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, PeftModel), "VeRA.merge expects the PeftModel returned by prepare()"
        return model.merge_and_unload()

    @property
    def scaling(self) -> float:
        return 1.0  # the update is Λ_b B Λ_d A, no alpha/rank factor

    # costs: docs/methods/vera.md#cost-model
    def trainable_params(self, in_features: int, out_features: int, rank: int) -> int:
        """b (one per output feature) and d (one per rank)."""
        return out_features + rank

    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        """Forward A x, B h (2r(in + out)); backward only ∂h = Bᵀ(b ⊙ g) (2·out·r) and, for the input gradient,
        ∂x = Aᵀ(d ⊙ ∂h) (2r·in): A and B are frozen, the vectors' gradients are element-wise."""
        m, n, r = out_features, in_features, rank
        return LinearFlops(2 * r * (m + n), 2 * m * r + (2 * r * n if input_grad else 0))

    def shared_memory_bytes(self, layers: Sequence[tuple[int, int]], rank: int) -> float:
        """The shared fp32 A (r × largest in) and B (largest out × r), once per model."""
        if not layers:
            return 0.0
        return 4.0 * rank * (max(a for a, _ in layers) + max(b for _, b in layers))

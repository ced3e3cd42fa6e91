"""PiSSA (Meng et al., NeurIPS 2024): LoRA initialised from the top-r singular triplets of W.

What makes it PiSSA: ``W = U S Vᵀ``; ``A0 = diag(√(S_r/s)) V_rᵀ``, ``B0 = U_r diag(√(S_r/s))`` (top r) and the
frozen weight becomes the residual ``W_res = W − s·B0A0 = W − U_r S_r V_rᵀ``. PEFT's ``init_lora_weights="pissa"``
(exact SVD) or ``"pissa_niter_K"`` (randomised SVD, K subspace iterations) does exactly this. Saving converts the
adapter so it applies to the pretrained weights (see :mod:`loralab.methods.residual`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import LoraConfig
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.residual import ResidualLoRA


@dataclass
class PiSSA(ResidualLoRA):
    name: str = "pissa"
    init_lora_weights: bool | str = "pissa"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    # None → exact SVD ("pissa"); K → randomised SVD with K subspace iterations ("pissa_niter_K").
    niter: int | None = None

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        if self.niter is not None and (isinstance(self.niter, bool) or not isinstance(self.niter, int)
                                       or self.niter < 0):
            raise ConfigError(
                f"method.niter={self.niter!r} is invalid: use null (exact SVD) or an integer >= 0 "
                f"(PiSSA scripts use 16)"
            )

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        config = super().lora_config(target_modules, modules_to_save)
        config.init_lora_weights = "pissa" if self.niter is None else f"pissa_niter_{self.niter}"
        return config

"""Orthogonal-only ablation of SDS-LoRA (SDS paper, Table 5): ΔW = s·Q_B·Q_Aᵀ with trainable bases.

Every singular value of ΔW is pinned to s, so the update cannot scale its directions ("no full
representational capacity"). How the paper trains the bases is NOT FOUND; here (INFERRED) Q_B and Q_A are a
*differentiable* QR of the trainable B and Aᵀ (sign-normalised so diag(R) > 0, which makes the map smooth),
recomputed every forward, so there is nothing to refresh. Warm-up as in SDS-LoRA (plain LoRA, because
B = 0 has no basis); at the transition B ← U, A ← Vᵀ from the SVD of the warm-up update s·B·A = UΣVᵀ, so the
bases start at the warm-up's singular vectors. The transition cannot preserve the function: Σ becomes s·I.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from loralab.methods.base import LinearFlops
from loralab.methods.sds_lora import SDSLinearVariant, SDSLoRA, low_rank_svd


def canonical_basis(m: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of ``m`` (fp32) with diag(R) made positive; differentiable w.r.t. ``m``."""
    q, r = torch.linalg.qr(m.float(), mode="reduced")
    sign = torch.sign(torch.diagonal(r)).detach()
    return q * torch.where(sign == 0, torch.ones_like(sign), sign)


class OrthoLinearVariant(SDSLinearVariant):
    """ΔW = s·qr(B)·qr(Aᵀ)ᵀ after the warm-up; plain LoRA before."""

    cached_bases: ClassVar[bool] = False  # only the warm-up flag is state: the bases are functions of A and B

    @staticmethod
    def bases(module: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        return canonical_basis(module.lora_B[adapter].weight), canonical_basis(module.lora_A[adapter].weight.T)

    @classmethod
    def factors(cls, module: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()
        if not cls.state(module, adapter).active:
            return b, a
        with torch.no_grad():
            q_b, q_a = cls.bases(module, adapter)
        return q_b.to(b.dtype), q_a.T.to(a.dtype)

    @classmethod
    def forward(cls, module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        lora_a, lora_b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        x = module.lora_dropout[active_adapter](x)
        scale = module.scaling[active_adapter]
        if not cls.state(module, active_adapter).active:
            return result + lora_b(lora_a(x)) * scale
        q_b, q_a = cls.bases(module, active_adapter)
        return result + ((x @ q_a.to(x.dtype)) @ q_b.T.to(x.dtype) * scale).to(result.dtype)

    @classmethod
    @torch.no_grad()
    def transition(cls, module: LoraLinear, adapter: str) -> None:
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        u, _, v = low_rank_svd(b, a, module.scaling[adapter])
        b.copy_(u.to(b.dtype))
        a.copy_(v.T.to(a.dtype))
        cls.state(module, adapter).activate()

    @classmethod
    def refresh(cls, module: LoraLinear, adapter: str) -> None:
        """Nothing to do: the bases follow A and B at every forward."""


@dataclass
class SDSOrtho(SDSLoRA):
    """Uses SDS-LoRA's warm-up options; ``refresh``/``k``/``interval`` have no effect (nothing is cached)."""

    name: str = "sds_ortho"
    variant: ClassVar[type[SDSLinearVariant]] = OrthoLinearVariant
    # nothing is cached between steps, so SDS-LoRA's refresh options do not apply
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"use_rslora", "use_dora", "refresh", "k", "interval"})

    # costs: docs/methods/sds_ortho.md#cost-model
    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        raise NotImplementedError("sds_ortho has no FLOP model: its bases are QR factors of A and B recomputed, "
                                  "and differentiated through, at every forward")

    def periodic_flops(self, in_features: int, out_features: int, rank: int) -> int:
        return 0

    def extra_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        return 0.0

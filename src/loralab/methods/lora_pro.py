"""LoRA-Pro (Wang et al., ICLR 2025): factor gradients adjusted so the LoRA step mimics a full-FT AdamW step.

One LoRA step changes W by ``s(B·ĝ_A + ĝ_B·A)`` (first order). For raw factor gradients ``g_A = sBᵀG``,
``g_B = sGAᵀ`` the Frobenius-closest such "equivalent gradient" to the full gradient G is reached by

    ĝ_A = (1/s²)(BᵀB)⁻¹ g_A + X A
    ĝ_B = (1/s²)[I − B(BᵀB)⁻¹Bᵀ] g_B (AAᵀ)⁻¹ − B X

for any r×r X (X cancels in the product). The paper fixes X by also keeping (ĝ_A, ĝ_B) closest to the raw
gradients, which gives the Sylvester equation ``(BᵀB)X + X(AAᵀ) = −(1/s²)(BᵀB)⁻¹ g_A Aᵀ``
(``x_choice="sylvester"``, the default; ``"zero"`` drops X for ablations). The AdamW equivalent
(docs/methods/lora_pro.md#optimiser-step):
full-size Adam moments on the equivalent gradient g̃, map the Adam direction back to factor gradients, re-adjust
(with X), then a plain SGD step.
Memory: two n×m moments per adapted layer, like full fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.lora import LoRA
from loralab.methods.scaled_adamw import PairOptimizer, check_common, compute_dtype

X_CHOICES = ("sylvester", "zero")


def symmetric_sylvester(p: torch.Tensor, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Solve ``P X + X Q = C`` for symmetric PSD P, Q by eigendecomposition (r×r, cheap)."""
    lp, up = torch.linalg.eigh(p)
    lq, uq = torch.linalg.eigh(q)
    denom = lp[:, None] + lq[None, :]
    # Where both spectra vanish (A = B = 0) the equation puts no constraint on X; take that component as 0.
    safe = torch.where(denom.abs() > torch.finfo(denom.dtype).tiny, denom, torch.ones_like(denom))
    xt = torch.where(denom.abs() > torch.finfo(denom.dtype).tiny, (up.T @ c @ uq) / safe, torch.zeros_like(denom))
    return up @ xt @ uq.T


def adjusted_factor_grads(
    a: torch.Tensor,
    b: torch.Tensor,
    g_a: torch.Tensor,
    g_b: torch.Tensor,
    scaling: float,
    damping: float = 1e-8,
    x_choice: str = "sylvester",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's optimal (ĝ_A, ĝ_B) from the raw factor gradients (A: r×m, B: n×r)."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    btb, aat = b.T @ b, a @ a.T
    # pinv(· + δI) as in the reference: stays finite while B is still (near) zero.
    btb_inv = torch.linalg.pinv(btb + damping * eye)
    aat_inv = torch.linalg.pinv(aat + damping * eye)
    s2 = scaling * scaling
    ga_hat = btb_inv @ g_a / s2
    # [I − B(BᵀB)⁻¹Bᵀ] g_B without forming the n×n projector.
    gb_hat = (g_b - b @ (btb_inv @ (b.T @ g_b))) @ aat_inv / s2
    if x_choice == "sylvester":
        x = symmetric_sylvester(btb, aat, -(btb_inv @ g_a @ a.T) / s2)
        ga_hat = ga_hat + x @ a
        gb_hat = gb_hat - b @ x
    return ga_hat, gb_hat


def equivalent_gradient(
    a: torch.Tensor, b: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor, scaling: float
) -> torch.Tensor:
    """The weight-space change direction ``s(B g_A + g_B A)`` of a factor step."""
    return scaling * (b @ ga + gb @ a)


def check_pro_options(damping: float, x_choice: str) -> None:
    if not damping >= 0:
        raise ConfigError(f"method.damping={damping!r} is invalid: it must be >= 0 (reference 1e-8)")
    if x_choice not in X_CHOICES:
        raise ConfigError(f"method.x_choice={x_choice!r} is invalid: valid values are {list(X_CHOICES)}")


class LoRAProAdamW(PairOptimizer):
    """LoRA-Pro's AdamW: full-size Adam on the equivalent gradient, SGD on the re-adjusted factor gradients."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        damping: float,
        x_choice: str,
    ) -> None:
        """Every option comes from the method's config; its defaults are :class:`LoRAPro`'s fields."""
        check_pro_options(damping, x_choice)
        super().__init__(model, lr, weight_decay, dict(betas=tuple(betas), eps=eps, damping=damping, x_choice=x_choice))

    def _pair_step(self, group: dict[str, Any], a: nn.Parameter, b: nn.Parameter) -> None:
        dt = compute_dtype(a)
        am, bm = a.detach().to(dt), b.detach().to(dt)
        g_a = a.grad.to(dt) if a.grad is not None else torch.zeros_like(am)
        g_b = b.grad.to(dt) if b.grad is not None else torch.zeros_like(bm)
        s = group["scaling"]
        beta1, beta2 = group["betas"]

        # 1-2: equivalent full-size gradient (X cancels in it, so skip the solve).
        ga_hat, gb_hat = adjusted_factor_grads(am, bm, g_a, g_b, s, group["damping"], x_choice="zero")
        g_full = equivalent_gradient(am, bm, ga_hat, gb_hat, s)

        # 3: full-size Adam moments, kept in A's state so they are saved with the optimizer.
        state = self.state[a]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(g_full)
            state["exp_avg_sq"] = torch.zeros_like(g_full)
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].mul_(beta1).add_(g_full, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g_full, g_full, value=1 - beta2)
        direction = (state["exp_avg"] / (1 - beta1**t)) / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + group["eps"])

        # 4: map the Adam direction back to factor gradients and re-adjust them (now with X).
        ga_new, gb_new = adjusted_factor_grads(
            am, bm, s * bm.T @ direction, s * direction @ am.T, s, group["damping"], group["x_choice"]
        )

        # 5: plain SGD step with the scheduled lr; decoupled decay on the factors (INFERRED, reference uses wd = 0).
        lr, wd = group["lr"], group["weight_decay"]
        for p, upd in ((a, ga_new), (b, gb_new)):
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(upd.to(p.dtype), alpha=-lr)


@dataclass
class LoRAPro(LoRA):
    """LoRA (PEFT init) trained with :class:`LoRAProAdamW`."""

    name: str = "lora_pro"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    needs_whole_factors: ClassVar[str] = "its optimiser solves for the equivalent gradient from whole A and B"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    damping: float = 1e-8  # inverses are pinv(M + damping·I), as the reference
    x_choice: str = "sylvester"

    # costs: docs/methods/lora_pro.md#cost-model
    def step_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """s(B·ĝ_A + ĝ_B·A) and the map back Bᵀ·D, D·Aᵀ (8·out·in·rank) plus the r×r solves (4r²(in + out))."""
        return 8 * out_features * in_features * rank + 4 * rank * rank * (in_features + out_features)

    def extra_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """Full-size (out×in) fp32 Adam m, v and the equivalent gradient: 12 B per weight element."""
        return 12.0 * out_features * in_features

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        check_common(0.0, (self.beta1, self.beta2), self.eps, 0.0)
        check_pro_options(self.damping, self.x_choice)

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return LoRAProAdamW(
            model,
            lr=lr,
            weight_decay=weight_decay,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            damping=self.damping,
            x_choice=self.x_choice,
        )

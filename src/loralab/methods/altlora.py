"""AltLoRA / AltLoRA+ (Yu, Wang, Chen, Xue, 2025): alternating, r×r-preconditioned factor updates with momentum
carried across steps by re-expressing it in the other factor's new basis (docs/methods/altlora.md#update).

Per layer, in an A-phase (B held fixed)::

    g̃_A = (BᵀB + δI)⁻¹ ∇_A,  P_A = (BᵀB + δI)⁻¹ Bᵀ B_old,  M_A ← β1·P_A M_A + (1−β1)·g̃_A,
    A ← A − η/(1−β1^t)·M_A,  B_old ← B

and symmetrically in a B-phase (``g̃_B = ∇_B (AAᵀ+δI)⁻¹``, ``P_B = A_old Aᵀ (AAᵀ+δI)⁻¹``,
``M_B ← β1·M_B P_B + …``).
``P`` maps the stored momentum, expressed against the factor it was accumulated with (B_old), onto the current one
(least squares: B·P_A ≈ B_old).

AltLoRA+ follows the authors' optimiser (``altlora_plus`` in their public code) rather than a textbook Adam::

    N = β1·P_A M_A + (1−β1)·g̃_A,   M_A ← β1·M_A + (1−β1)·g̃_A,   V_A ← β2·V_A + (1−β2)·g̃_A²,
    A ← A − η/(1−β1^t) · N / (√V_A + ε)

The transported momentum N is used for this step only (the stored M is accumulated untransported) and V is not
bias-corrected, so the first step is about η/√(1−β2) ≈ 32·η per entry, not Adam's η. Where loralab differs from
the reference code (its alternation schedule, the order of updates without alternation, parameter pairing, and
the learning rate: the reference reads the constructor's, so a scheduler does not reach its steps nor its weight
decay η·λ, while here both follow the Trainer's schedule) is listed in
docs/methods/altlora.md#differences-from-the-reference-code.

Phases switch every ``alter_freq`` optimiser steps, starting with B (B0 = 0 is the factor with a non-zero gradient).
As in the reference trainer after its first switch, the inactive factor is frozen (``requires_grad=False``) so the
next backward pass neither computes nor clips its gradient (``freeze_inactive``). The phase counter is optimiser
state, so a resumed run continues the same schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import LinearFlops
from loralab.methods.lora import LoRA
from loralab.methods.scaled_adamw import PairOptimizer, check_common, compute_dtype, damped_inverse

VARIANTS = ("altlora", "altlora_plus")


def check_alt_options(damping: float, alter_freq: int, variant: str) -> None:
    if not damping >= 0:
        raise ConfigError(f"method.damping={damping!r} is invalid: it must be >= 0 (reference 1e-5)")
    if not isinstance(alter_freq, int) or isinstance(alter_freq, bool) or alter_freq < 1:
        raise ConfigError(f"method.alter_freq={alter_freq!r} is invalid: it must be an integer >= 1")
    if variant not in VARIANTS:
        raise ConfigError(f"method.variant={variant!r} is invalid: valid values are {list(VARIANTS)}")


class AltLoRAOptimizer(PairOptimizer):
    """AltLoRA(+) over per-layer (A, B) groups; other trainable parameters get plain AdamW."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        damping: float,
        alter_freq: int,
        alternate: bool,
        variant: str,
        freeze_inactive: bool,
    ) -> None:
        """Every option comes from the method's config; its defaults are :class:`AltLoRA`'s fields."""
        check_alt_options(damping, alter_freq, variant)
        defaults = dict(
            betas=tuple(betas), eps=eps, damping=damping, alter_freq=alter_freq, alternate=alternate,
            variant=variant, freeze_inactive=freeze_inactive,
        )
        super().__init__(model, lr, weight_decay, defaults)
        self._sync_requires_grad()

    # ------------------------------------------------------------------ schedule
    def moving(self, group: dict[str, Any]) -> tuple[bool, bool]:
        """(A moves, B moves) at this group's next step."""
        if not group["alternate"]:
            return True, True
        a = group["params"][0]
        done = int(self.state[a]["pair_step"].item()) if "pair_step" in self.state[a] else 0
        a_phase = (done // group["alter_freq"]) % 2 == 1  # phase 0 is a B-phase
        return a_phase, not a_phase

    def _sync_requires_grad(self) -> None:
        for group in self.param_groups:
            if group["lora_pair"] and group["freeze_inactive"]:
                a, b = group["params"]
                move_a, move_b = self.moving(group)
                a.requires_grad_(move_a)
                b.requires_grad_(move_b)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._sync_requires_grad()  # the restored counter decides which factor the next backward needs

    @torch.no_grad()
    def step(self, closure: Any = None) -> float | None:
        loss = super().step(closure)
        self._sync_requires_grad()
        return loss

    # ------------------------------------------------------------------ update
    def _pair_step(self, group: dict[str, Any], a: nn.Parameter, b: nn.Parameter) -> None:
        move_a, move_b = self.moving(group)
        state_a = self.state[a]
        if "pair_step" not in state_a:
            state_a["pair_step"] = torch.zeros((), dtype=torch.float32)
        dt = compute_dtype(a)
        # Both factor steps of a non-alternating step see the pre-step factors (INFERRED for alternate=False).
        a_pre, b_pre = a.detach().to(dt).clone(), b.detach().to(dt).clone()
        if move_a and a.grad is not None:
            self._factor_step(group, a, b_pre, side="A")
        if move_b and b.grad is not None:
            self._factor_step(group, b, a_pre, side="B")
        state_a["pair_step"] += 1

    def _factor_step(self, group: dict[str, Any], p: nn.Parameter, other: torch.Tensor, side: str) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        grad = p.grad.to(other.dtype)
        if "exp_avg" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(grad)
            state["other_ref"] = other.clone()
            if group["variant"] == "altlora_plus":
                state["exp_avg_sq"] = torch.zeros_like(grad)
        ref, m = state["other_ref"], state["exp_avg"]
        if side == "A":  # other = B (n×r)
            h_inv = damped_inverse(other.T @ other, group["damping"])
            g = h_inv @ grad
            transported = (h_inv @ other.T @ ref) @ m  # r×r transport first: no n×m intermediate
        else:  # other = A (r×m)
            h_inv = damped_inverse(other @ other.T, group["damping"])
            g = grad @ h_inv
            transported = m @ (ref @ other.T @ h_inv)
        state["other_ref"].copy_(other)
        state["step"] += 1
        t = state["step"].item()  # per-factor count: the momentum only accumulates in this factor's phases
        momentum = beta1 * transported + (1 - beta1) * g
        if "exp_avg_sq" in state:
            # AltLoRA+ as the authors' optimiser: the transported momentum enters this step only, while the stored
            # one is accumulated untransported; v (element-wise, never transported) is not bias-corrected.
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            update = momentum / (state["exp_avg_sq"].sqrt() + group["eps"])
        else:
            m.copy_(momentum)
            update = momentum
        p.add_(update.to(p.dtype), alpha=-group["lr"] / (1 - beta1**t))
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])


@dataclass
class AltLoRA(LoRA):
    """LoRA (PEFT init) trained with :class:`AltLoRAOptimizer`."""

    name: str = "altlora"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    needs_whole_factors: ClassVar[str] = "its optimiser preconditions with the r×r Gram matrices of whole A and B"
    variant: str = "altlora"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-4  # reference default; used by altlora_plus only
    damping: float = 1e-5  # δ in (BᵀB + δI)⁻¹, (AAᵀ + δI)⁻¹; reference default
    alter_freq: int = 1
    alternate: bool = True
    freeze_inactive: bool = True

    # costs: docs/methods/altlora.md#cost-model
    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        """One factor moves per step and the frozen one's gradient is never formed: the backward averaged over a
        B-phase (∇B 2mr; ∂h 2mr and ∂x 2rn only for the input gradient) and an A-phase (∂h 2mr, ∇A 2rn, ∂x 2rn)."""
        m, n, r = out_features, in_features, rank
        b_phase = 2 * m * r + ((2 * m * r + 2 * r * n) if input_grad else 0)
        a_phase = 2 * m * r + 2 * r * n + (2 * r * n if input_grad else 0)
        return LinearFlops(2 * r * (m + n), (b_phase + a_phase) // 2)

    def step_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """The active factor's r×r preconditioner, 2r²(in + out)."""
        return 2 * rank * rank * (in_features + out_features)

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        check_common(0.0, (self.beta1, self.beta2), self.eps, 0.0)
        check_alt_options(self.damping, self.alter_freq, self.variant)

    def multi_process_issue(self) -> str | None:
        if not self.freeze_inactive:
            return None
        return ("method.freeze_inactive=true switches requires_grad every step, which DDP's gradient buckets (fixed "
                "when it wraps the model) do not follow, so the gradient norm and the update differ from one process; "
                "set method.freeze_inactive=false (measured equal to one process; the frozen factor's gradient is then "
                "computed, and counted in the clipping norm, but not applied) or run on one process")

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return AltLoRAOptimizer(
            model,
            lr=lr,
            weight_decay=weight_decay,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            damping=self.damping,
            alter_freq=self.alter_freq,
            alternate=self.alternate,
            variant=self.variant,
            freeze_inactive=self.freeze_inactive,
        )

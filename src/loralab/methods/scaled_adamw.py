"""Riemannian-preconditioned LoRA / ScaledAdamW (Zhang & Pilanci, ICML 2024), reference variant.

Per adapted layer the factor gradients are preconditioned by r×r matrices before entering Adam:
``∇A ← (BᵀB + δI)⁻¹ ∇A`` and ``∇B ← ∇B (AAᵀ + δI)⁻¹``. The reference optimiser (``AdamWr``) differs
from PEFT's ``create_riemannian_optimizer`` in three ways we reproduce and expose as options
(docs/methods/scaled_adamw.md#reference-vs-peft):

* damping δ = 1e-6 (PEFT: 1e-2) — ``damping``;
* B's preconditioner uses the *already updated* A (PEFT: the pre-update A) — ``precondition_order``;
* Adam ε = 1e-6 and no bias correction — ``eps`` / ``correct_bias``.

This module also holds the pieces the other optimiser-side methods (LoRA-Pro, AltLoRA) share: pairing A with B by
module (never by list position, docs/methods/scaled_adamw.md#pairing-by-module), per-layer param groups, and plain
AdamW for non-LoRA parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.lora import LoRA

PRECONDITION_ORDERS = ("sequential", "simultaneous")


# --------------------------------------------------------------------------------------------- shared helpers
def lora_pairs(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter, float]]:
    """``(module name, A, B, scaling)`` for every PEFT LoRA linear layer whose factors train."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            # "or": AltLoRA freezes one factor between steps; the pair still belongs to the optimiser.
            if a.ndim == 2 and b.ndim == 2 and (a.requires_grad or b.requires_grad):
                pairs.append((name, a, b, float(module.scaling[adapter])))
    return pairs


def pair_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """One group per LoRA layer (params ``[A, B]``) plus plain groups for every other trainable parameter.

    A group per layer keeps the pairing explicit in ``state_dict()['param_groups']`` and lets the Trainer's scheduler
    scale every group's ``lr`` alike. Biases and norm weights (1-D) get no weight decay, as in the Trainer's default.
    """
    groups: list[dict[str, Any]] = []
    paired: set[int] = set()
    for name, a, b, scaling in lora_pairs(model):
        groups.append(
            {"params": [a, b], "lora_pair": True, "name": name, "scaling": scaling,
             "lr": lr, "weight_decay": weight_decay}
        )
        paired.update((id(a), id(b)))
    if not groups:
        raise ConfigError(
            "the model has no trainable LoRA (lora_A, lora_B) pairs; optimiser-side LoRA methods need at least one"
        )
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in paired]
    decay = [p for p in rest if p.ndim >= 2]
    no_decay = [p for p in rest if p.ndim < 2]
    for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            groups.append({"params": params, "lora_pair": False, "name": "other", "lr": lr, "weight_decay": wd})
    return groups


def check_common(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Raise ConfigError for out-of-range optimiser hyperparameters."""
    if not lr >= 0:
        raise ConfigError(f"learning_rate={lr!r} is invalid: it must be >= 0")
    for i, beta in enumerate(betas, start=1):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"method.beta{i}={beta!r} is invalid: it must lie in [0, 1)")
    if not eps >= 0:
        raise ConfigError(f"method.eps={eps!r} is invalid: it must be >= 0")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay={weight_decay!r} is invalid: it must be >= 0")


def damped_inverse(mat: torch.Tensor, damping: float) -> torch.Tensor:
    """``(mat + δI)⁻¹``; falls back to the identity when singular (as the reference does for δ = 0)."""
    eye = torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
    inv, info = torch.linalg.inv_ex(mat + damping * eye)
    if info.item() != 0 or not torch.isfinite(inv).all():
        return eye
    return inv


def compute_dtype(p: torch.Tensor) -> torch.dtype:
    """Solves and moments in at least fp32 (bf16 inverses are unusable)."""
    return torch.promote_types(p.dtype, torch.float32)


def adamw_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict[str, Any]) -> None:
    """Standard AdamW (decoupled decay, bias correction) for parameters outside the LoRA pairs."""
    beta1, beta2 = group["betas"]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, dtype=compute_dtype(p))
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=compute_dtype(p))
    state["step"] += 1
    t = state["step"].item()
    g = grad.to(state["exp_avg"].dtype)
    state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
    update = state["exp_avg"] / (1 - beta1**t) / denom
    if group["weight_decay"]:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    p.add_(update.to(p.dtype), alpha=-group["lr"])


class PairOptimizer(torch.optim.Optimizer):
    """Base: per-layer (A, B) groups get ``_pair_step``; other groups get plain AdamW."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, defaults: dict[str, Any]) -> None:
        check_common(lr, defaults["betas"], defaults["eps"], weight_decay)
        super().__init__(pair_param_groups(model, lr, weight_decay), dict(defaults, lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["lora_pair"]:
                a, b = group["params"]
                if a.grad is None and b.grad is None:
                    continue
                self._pair_step(group, a, b)
            else:
                for p in group["params"]:
                    if p.grad is not None:
                        adamw_update(p, p.grad, self.state[p], group)
        return loss

    def _pair_step(self, group: dict[str, Any], a: nn.Parameter, b: nn.Parameter) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- ScaledAdamW
def _adam_direction(state: dict, g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    """Adam moments of a (preconditioned) factor gradient → the step direction.

    Bias correction in the reference's (old HF AdamW) form ``√(1−β2^t)/(1−β1^t) · m/(√v + ε)``: ε sits on the
    uncorrected √v, unlike torch's AdamW.
    """
    beta1, beta2 = group["betas"]
    if "exp_avg" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(g)
        state["exp_avg_sq"] = torch.zeros_like(g)
    state["step"] += 1
    t = state["step"].item()
    state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = 1.0
    if group["correct_bias"]:
        step_size = math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return step_size * state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"])


def _apply(p: nn.Parameter, direction: torch.Tensor, group: dict[str, Any]) -> None:
    """``p ← p − lr·direction``, then decoupled decay ``p ← p − lr·wd·p`` (the reference's order)."""
    p.add_(direction.to(p.dtype), alpha=-group["lr"])
    if group["weight_decay"]:
        p.mul_(1 - group["lr"] * group["weight_decay"])


class ScaledAdamW(PairOptimizer):
    """AdamW on Riemannian-preconditioned LoRA gradients; all state lives in ``self.state`` keyed by parameter."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        damping: float,
        correct_bias: bool,
        precondition_order: str,
    ) -> None:
        """Every option comes from the method's config; its defaults are :class:`ScaledAdamWLoRA`'s fields."""
        check_scaled_options(damping, precondition_order)
        defaults = dict(
            betas=tuple(betas), eps=eps, damping=damping, correct_bias=correct_bias,
            precondition_order=precondition_order,
        )
        super().__init__(model, lr, weight_decay, defaults)

    def _pair_step(self, group: dict[str, Any], a: nn.Parameter, b: nn.Parameter) -> None:
        dt = compute_dtype(a)
        b_now = b.detach().to(dt)
        a_before = a.detach().to(dt).clone()
        if a.grad is not None:
            g_a = damped_inverse(b_now.T @ b_now, group["damping"]) @ a.grad.to(dt)
            _apply(a, _adam_direction(self.state[a], g_a, group), group)
        if b.grad is not None:
            # The reference preconditions B with the A it has just updated (in-place aliasing); PEFT uses the old A.
            a_pre = a.detach().to(dt) if group["precondition_order"] == "sequential" else a_before
            g_b = b.grad.to(dt) @ damped_inverse(a_pre @ a_pre.T, group["damping"])
            _apply(b, _adam_direction(self.state[b], g_b, group), group)


def check_scaled_options(damping: float, precondition_order: str) -> None:
    if not damping >= 0:
        raise ConfigError(f"method.damping={damping!r} is invalid: it must be >= 0 (reference 1e-6, PEFT 1e-2)")
    if precondition_order not in PRECONDITION_ORDERS:
        raise ConfigError(
            f"method.precondition_order={precondition_order!r} is invalid: valid values are {list(PRECONDITION_ORDERS)}"
        )


@dataclass
class ScaledAdamWLoRA(LoRA):
    """LoRA (PEFT init) trained with :class:`ScaledAdamW`."""

    name: str = "scaled_adamw"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    needs_whole_factors: ClassVar[str] = "its optimiser preconditions with the r×r Gram matrices of whole A and B"
    damping: float = 1e-6  # δ = the reference's optimizer_reg (its Mistral GLUE runs tune it per task, 1e-6..100)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    correct_bias: bool = False  # reference default: no Adam bias correction
    precondition_order: str = "sequential"

    # costs: docs/methods/scaled_adamw.md#cost-model
    def step_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """Gram matrices BᵀB, AAᵀ and the two preconditioned gradients, 4r²(in + out)."""
        return 4 * rank * rank * (in_features + out_features)

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        check_common(0.0, (self.beta1, self.beta2), self.eps, 0.0)
        check_scaled_options(self.damping, self.precondition_order)

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return ScaledAdamW(
            model,
            lr=lr,
            weight_decay=weight_decay,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            damping=self.damping,
            correct_bias=self.correct_bias,
            precondition_order=self.precondition_order,
        )


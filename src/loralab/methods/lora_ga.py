"""LoRA-GA (Wang, Yu, Li, NeurIPS 2024), the authors' reference recipe (docs/methods/lora_ga.md#reference-recipe).

1. Average the full-weight gradient G = ∂L/∂W of every target layer over ``grad_batches`` calibration batches of
   ``grad_batch_size`` training examples (reference: 64 batches of 2, the first 128 examples of the training set).
2. ``U, S, V = svd_lowrank(G, q=min(4r, min(n, m)), niter=4)``.
3. Direction ``ArB2r``: ``A0 = V[:, :r]ᵀ`` (top-r right vectors), ``B0 = U[:, r:2r]`` (the next r left vectors).
4. Scale ``stable``: **both** A0 and B0 times ``n^{1/4}/√γ`` (n = out_features); no singular values enter.
5. ``W_res = W − s·B0A0`` so the model is unchanged at step 0; train with plain AdamW.

PEFT's ``init_lora_weights="lora_ga"`` differs (docs/methods/lora_ga.md#peft-differs): it multiplies B0 by
``diag(S[r:2r])`` and applies the stable factor to B0 only. ``tests/test_methods_optim.py`` shows the difference.

Because W is replaced, saving goes through :class:`~loralab.methods.residual.ResidualLoRA`: the written adapter is the
rank-2r conversion ``s(BA − B0A0)``, which applies to the *original* W like any plain PEFT LoRA adapter.
"""
from __future__ import annotations

from typing import Any, ClassVar
from dataclasses import dataclass

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import CalibrationBatches, CalibrationRequest, matching_linears
from loralab.methods.residual import ResidualLoRA, init_dtype, set_residual_init

DIRECTIONS = ("ArB2r", "ArBr", "A2rBr", "random")
SCALES = ("stable", "gd", "unit")
SVD_METHODS = ("lowrank", "exact")


def estimate_gradients(
    model: nn.Module, layers: dict[str, nn.Linear], batches: CalibrationBatches, max_batches: int
) -> dict[str, torch.Tensor]:
    """Mean over the first ``max_batches`` batches of ∂loss/∂W (fp32, fp64 on fp64 models) per named linear layer."""
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    # Only the target weights need gradients; everything else stays out of autograd (memory).
    for p in model.parameters():
        p.requires_grad_(False)
    sums = {name: torch.zeros_like(mod.weight, dtype=init_dtype(mod.weight)) for name, mod in layers.items()}
    device = next(model.parameters()).device
    count = 0
    model.train()
    try:
        for mod in layers.values():
            mod.weight.requires_grad_(True)
            mod.weight.grad = None
        for batch in batches():
            if count >= max_batches:
                break
            with torch.enable_grad():
                out = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
                out.loss.backward()
            for name, mod in layers.items():
                sums[name] += mod.weight.grad.to(sums[name].dtype)
                mod.weight.grad = None
            count += 1
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
            p.grad = None
        model.train(was_training)
    if count < max_batches:
        raise ConfigError(f"LoRA-GA asks for {max_batches} calibration batches (method.grad_batches) and got {count}")
    return {name: total / count for name, total in sums.items()}


def loraga_factors(
    grad: torch.Tensor,
    rank: int,
    scaling: float,
    direction: str = "ArB2r",
    scale: str = "stable",
    stable_gamma: float = 16.0,
    svd_method: str = "lowrank",
    svd_niter: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference LoRA-GA (A0: r×m, B0: n×r) from the averaged gradient G (n×m), in fp32 or wider (fp64)."""
    g = grad.to(init_dtype(grad))
    n, m = g.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # svd_lowrank's sketch and the "random" direction draw from the global RNG
        if svd_method == "lowrank":
            u, _, v = torch.svd_lowrank(g, q=min(4 * rank, min(n, m)), niter=svd_niter)
        else:
            u, _, vh = torch.linalg.svd(g, full_matrices=False)
            v = vh.T
        if direction == "ArB2r":
            a_idx, b_idx = torch.arange(rank), torch.arange(rank, 2 * rank)
        elif direction == "A2rBr":
            a_idx, b_idx = torch.arange(rank, 2 * rank), torch.arange(rank)
        elif direction == "ArBr":
            a_idx, b_idx = torch.arange(1, 2 * rank, 2), torch.arange(0, 2 * rank, 2)
        else:  # "random": disjoint random halves of the top 2r indices (CODE, docs/methods/lora_ga.md#directions)
            perm = torch.randperm(2 * rank)
            a_idx, b_idx = perm[:rank], perm[rank:]
    a0 = v[:, a_idx].T.contiguous()
    b0 = u[:, b_idx].contiguous()
    if scale == "stable":
        factor = n**0.25 / stable_gamma**0.5
        a0, b0 = a0 * factor, b0 * factor
    elif scale == "gd":
        a0, b0 = a0 / scaling, b0 / scaling
    return a0, b0


@dataclass
class LoRAGA(ResidualLoRA):
    """LoRA whose (A0, B0) come from the SVD of the calibration gradient; the base weights become ``W − s·B0A0``."""

    name: str = "lora_ga"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_dora"})
    direction: str = "ArB2r"
    scale: str = "stable"
    stable_gamma: float = 16.0
    grad_batches: int = 64
    grad_batch_size: int = 2  # the reference's bsz: G averages 64 batches of 2, its first 128 training examples
    svd_method: str = "lowrank"
    svd_niter: int = 4
    seed: int = 0
    quick_init: ClassVar[dict[str, Any]] = {"grad_batches": 1}

    # costs: docs/methods/lora_ga.md#cost-model
    def init_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """The full fp32 gradient of the adapted weight, averaged over the calibration batches."""
        return 4.0 * in_features * out_features

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        options = (("direction", self.direction, DIRECTIONS), ("scale", self.scale, SCALES),
                   ("svd_method", self.svd_method, SVD_METHODS))
        for option, value, valid in options:
            if value not in valid:
                raise ConfigError(f"method.{option}={value!r} is invalid: valid values are {list(valid)}")
        if not self.stable_gamma > 0:
            raise ConfigError(f"method.stable_gamma={self.stable_gamma!r} is invalid: it must be > 0 (reference 16)")
        for option, value, low in (("grad_batches", self.grad_batches, 1), ("grad_batch_size", self.grad_batch_size, 1),
                                   ("svd_niter", self.svd_niter, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"method.{option}={value!r} is invalid: it must be an integer >= {low}")
        for name, mod in matching_linears(model, target_modules).items():
            if 2 * self.rank > min(mod.in_features, mod.out_features):
                limit = min(mod.in_features, mod.out_features) // 2
                raise ConfigError(
                    f"rank={self.rank} is too large for LoRA-GA on '{name}': it uses 2·rank singular vectors of a "
                    f"{mod.out_features}x{mod.in_features} gradient; valid ranks are 1..{limit}"
                )

    def calibration_request(self) -> CalibrationRequest:
        return CalibrationRequest(
            samples=self.grad_batches * self.grad_batch_size, batch_size=self.grad_batch_size,
            option=f"method.grad_batches={self.grad_batches} × method.grad_batch_size={self.grad_batch_size}",
        )

    def create_peft_model(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None,
        calibration: CalibrationBatches | None,
    ) -> PeftModel:
        if calibration is None:
            raise ConfigError("method=lora_ga needs calibration batches (its init is the SVD of a gradient)")
        grads = estimate_gradients(model, matching_linears(model, target_modules), calibration, self.grad_batches)
        peft_model = get_peft_model(model, self.lora_config(target_modules, modules_to_save))
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            base_name = name.split("base_model.model.", 1)[-1]
            if base_name not in grads:
                continue
            self.step0_errors[name] = self._init_layer(module, grads[base_name])
        return peft_model

    @torch.no_grad()
    def _init_layer(self, module: LoraLayer, grad: torch.Tensor) -> float:
        a0, b0 = loraga_factors(
            grad, self.rank, self.scaling, self.direction, self.scale, self.stable_gamma,
            self.svd_method, self.svd_niter, self.seed,
        )
        return set_residual_init(module, a0, b0)

    def merge(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, PeftModel), "LoRAGA.merge expects the PeftModel returned by prepare()"
        # W_res + s·BA = W + s(BA − B0A0): the in-memory residual base already carries the −s·B0A0 term.
        return model.merge_and_unload()

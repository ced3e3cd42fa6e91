"""SDS-LoRA (Oh, Baik, Lee; arXiv 2606.16454): ΔW = s·(Q_B A + B Q_Aᵀ) with detached orthonormal bases.

Q_B spans col(B) and Q_A spans row(A), so ∇A = s·Q_Bᵀ G and ∇B = s·G Q_A carry no singular values of the
factors (no "anisotropic gradient scaling"). Training runs ``warmup_steps`` of plain LoRA (B = 0 leaves Q_B
undefined), then reparameterises the warm-up update through its rank-r SVD (function-preserving), clears
the Adam moments of A and B, and refreshes the bases by QR after the optimiser steps picked by ``refresh``.

Implementation choice: a PEFT ``LoraVariant`` attached to the ``lora.Linear`` layers that ``get_peft_model``
builds, plus one ``SDSState`` sub-module per layer holding the bases as *persistent buffers*. Why:

* PEFT 0.21 saves/loads every persistent buffer of a tuner layer structurally, so Trainer checkpoints
  (``adapter_model.safetensors``) carry Q_A, Q_B and the warm-up flag and ``resume_from_checkpoint`` restores
  them with no extra code; the schedule position is derived from ``TrainerState.global_step``.
* ``lora_A``/``lora_B`` keep PEFT's names and shapes, so the rank-2r export (B' = [Q_B | B], A' = [A ; Q_Aᵀ])
  is a key-for-key rewrite of PEFT's own state dict, and merge/unload go through PEFT's variant hooks.
A replacement nn.Linear would have needed its own save/load/resume/export code for the same result.

The kernels live in :mod:`loralab.methods.sds_ops`: one fused rank-2r forward/backward per layer (no gradient
for the bases, no per-layer copies of the factors) and the refresh, batched over all layers by ``SDSCallback``.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from peft.utils import get_peft_model_state_dict
from peft.utils.other import transpose
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback

from loralab.errors import ConfigError, NonFiniteLossError
from loralab.methods.base import CalibrationBatches, LinearFlops
from loralab.methods.lora import LoRA
from loralab.methods.sds_ops import (  # noqa: F401  (orthonormal_basis, low_rank_svd: re-exported)
    FusedLowRank,
    FusedScratch,
    compute_dtype,
    low_rank_svd,
    orthonormal_basis,
    refresh_bases,
)

REFRESH_RULES = ("phased", "every_step", "uniform")
SCALE_RULES = ("lora", "rslora")
STATE_ATTR = "lora_sds"  # "lora_" prefix: PEFT treats it as adapter state (saved, moved, deleted with it)


# ------------------------------------------------------------------------------------------- schedule
def refresh_due(main_step: int, main_total: int, rule: str, k: int, interval: int) -> bool:
    """Whether the bases are refreshed after SDS step ``main_step`` (1-based, counted after the warm-up).

    ``phased`` (docs/methods/sds_lora.md#refresh-schedule): the ``main_total`` SDS steps form k equal phases; in phase
    p the bases are refreshed every p-th step (front-loaded). ``uniform``: every ``interval`` steps. ``every_step``:
    always.
    """
    if main_step < 1:
        return False
    if rule == "every_step":
        return True
    if rule == "uniform":
        return main_step % interval == 0
    phase = min(k, (main_step - 1) * k // max(main_total, 1) + 1)
    return main_step % phase == 0


def refresh_steps(total_steps: int, warmup_steps: int, rule: str, k: int = 5, interval: int = 1) -> list[int]:
    """Global optimiser steps after which the bases are refreshed (for tests and logging)."""
    main = total_steps - warmup_steps
    return [warmup_steps + t for t in range(1, main + 1) if refresh_due(t, main, rule, k, interval)]


# ---------------------------------------------------------------------------------------- per-layer state
class SDSState(nn.Module):
    """Bases and phase of one adapted layer.

    Persistent (checkpointed): ``q_b`` (m×r), ``q_a`` (n×r), both fp32, and ``sds_on`` (warm-up over). Nothing
    else is held per layer: the fused factors of the forward live in a ``FusedScratch`` shared by the layers
    attached together (see :mod:`loralab.methods.sds_ops`); ``up`` = [Q_B | B] (m×2r) and ``down`` = [A ; Q_Aᵀ]
    (2r×n) materialise this layer's pair there, in the dtype of the last fused forward, for inspection.
    """

    def __init__(self, out_features: int, in_features: int, rank: int, like: torch.Tensor, bases: bool = True) -> None:
        super().__init__()
        self.register_buffer("sds_on", torch.zeros((), dtype=torch.bool, device=like.device))
        self.active = False  # python mirror of sds_on: branching on a tensor would sync the device every call
        self.rank = rank
        self.scratch = FusedScratch()  # replaced by the one shared scratch in attach_variant
        self.scratch.reserve(out_features, in_features, rank)
        self._owner: tuple[LoraLinear, str] | None = None  # (layer, adapter), set in SDSLinearVariant.init
        if bases:
            fp32 = dict(device=like.device, dtype=torch.float32)
            self.register_buffer("q_b", torch.zeros(out_features, rank, **fp32))
            self.register_buffer("q_a", torch.zeros(in_features, rank, **fp32))

    def activate(self) -> None:
        self.sds_on.fill_(True)
        self.active = True

    @torch.no_grad()
    def set_bases(self, q_b: torch.Tensor, q_a: torch.Tensor) -> None:
        self.q_b.copy_(q_b)
        self.q_a.copy_(q_a)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) = ([A ; Q_Aᵀ], [Q_B | B]) of this layer, written into the shared scratch."""
        layer, adapter = self._owner
        a, b = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
        return self.scratch.fill(a, b, self.q_a, self.q_b)

    @property
    def up(self) -> torch.Tensor:
        return self.fused()[1]

    @property
    def down(self) -> torch.Tensor:
        return self.fused()[0]

    def _apply(self, fn: Any, recurse: bool = True) -> SDSState:
        # model.to(bf16) must not round the bases: keep the fp32 originals, follow only device moves
        keep = {n: getattr(self, n) for n in ("q_b", "q_a") if hasattr(self, n)}
        super()._apply(fn, recurse)
        self.scratch.buffers.clear()  # scratch on the old device/dtype: reallocated at the next forward
        for name, old in keep.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the mirror is not in the state dict: rebuild it from what was just loaded (Trainer resume)
        self.active = bool(self.sds_on)


# ------------------------------------------------------------------------------------------- the variant
class SDSLinearVariant(LoraVariant):
    """PEFT hooks for one SDS layer; the per-layer state lives in ``layer.lora_sds[adapter]``."""

    cached_bases: ClassVar[bool] = True  # whether SDSState holds Q buffers (the ortho ablation derives them)

    def supports_lora_conversion(self) -> bool:
        return False  # PEFT's generic converter would SVD-truncate; use export_lora_adapter instead

    @classmethod
    def init(cls, module: LoraLinear, adapter_name: str, **kwargs: Any) -> None:
        weight = module.lora_A[adapter_name].weight
        if not hasattr(module, STATE_ATTR):
            module.add_module(STATE_ATTR, nn.ModuleDict())
        state = SDSState(module.out_features, module.in_features, weight.shape[0], weight, bases=cls.cached_bases)
        # a plain attribute, not a submodule (no cycle in modules()/state_dict); deepcopy maps it to the copy
        object.__setattr__(state, "_owner", (module, adapter_name))
        getattr(module, STATE_ATTR)[adapter_name] = state

    @staticmethod
    def state(module: LoraLinear, adapter: str) -> SDSState:
        return getattr(module, STATE_ATTR)[adapter]

    @classmethod
    def factors(cls, module: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', A') with ΔW = s·B'·A' — exact, rank 2r in both phases (zero halves during warm-up)."""
        a, b = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()
        st = cls.state(module, adapter)
        if not st.active:
            return torch.cat([b, torch.zeros_like(b)], 1), torch.cat([a, torch.zeros_like(a)], 0)
        return torch.cat([st.q_b.to(b.dtype), b], 1), torch.cat([a, st.q_a.T.to(a.dtype)], 0)

    @classmethod
    def delta_weight(cls, module: LoraLinear, adapter: str) -> torch.Tensor:
        b2, a2 = cls.factors(module, adapter)
        # fp32 at least (bf16 factors), and the base weight's own dtype when wider: a float64 model merges exactly
        dtype = torch.promote_types(module.get_base_layer().weight.dtype, torch.float32)
        return transpose((b2.to(dtype) @ a2.to(dtype)) * module.scaling[adapter], module.fan_in_fan_out)

    @classmethod
    def merge_safe(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight.data - cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def forward(cls, module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        lora_a, lora_b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        x = module.lora_dropout[active_adapter](x)
        scale = module.scaling[active_adapter]
        st = cls.state(module, active_adapter)
        if not st.active:  # warm-up: plain LoRA
            return result + lora_b(lora_a(x)) * scale
        return FusedLowRank.apply(x, result, lora_a.weight, lora_b.weight, st.q_a, st.q_b, st.scratch, scale,
                                  compute_dtype(x))

    @classmethod
    @torch.no_grad()
    def transition(cls, module: LoraLinear, adapter: str) -> None:
        """End of warm-up: ΔW = sBA = UΣVᵀ; Q_B←U, Q_A←V, A←ΣVᵀ/(2s), B←UΣ/(2s) (same function)."""
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        s = module.scaling[adapter]
        u, sigma, v = low_rank_svd(b, a, s)
        half = sigma / (2 * s)
        a.copy_((half[:, None] * v.T).to(a.dtype))
        b.copy_((u * half).to(b.dtype))
        st = cls.state(module, adapter)
        st.set_bases(u, v)
        st.activate()

    @classmethod
    @torch.no_grad()
    def refresh(cls, module: LoraLinear, adapter: str) -> None:
        """Q_B ← qr(B).Q, Q_A ← qr(Aᵀ).Q; A and B are not corrected (the paper's subspace-change error)."""
        refresh_bases(cls.basis_pairs(module, adapter))

    @classmethod
    def basis_pairs(cls, module: LoraLinear, adapter: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(factor, basis) pairs the refresh orthonormalises: (B, Q_B) and (Aᵀ, Q_A); none without cached bases."""
        if not cls.cached_bases:
            return []
        st = cls.state(module, adapter)
        return [(module.lora_B[adapter].weight, st.q_b), (module.lora_A[adapter].weight.T, st.q_a)]


def sds_layers(model: nn.Module) -> list[tuple[str, LoraLinear, str]]:
    """(name, layer, adapter) of every layer carrying an SDS(-family) variant."""
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLinear) and hasattr(mod, STATE_ATTR):
            found += [(name, mod, ad) for ad in getattr(mod, STATE_ATTR) if ad in mod.lora_variant]
    return found


def clear_optimizer_state(optimizer: Any, params: list[torch.Tensor]) -> None:
    """Drop the per-parameter state (Adam moments, step) of ``params``; unwraps accelerate's wrapper."""
    inner = optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    for p in params:
        inner.state.pop(p, None)


class SDSCallback(TrainerCallback):
    """Warm-up transition after optimiser step ``warmup_steps``; basis refreshes after the scheduled steps.

    Everything is keyed on ``TrainerState.global_step`` (restored on resume) and the layers' ``sds_on``
    buffers (restored with the adapter), so a resumed run repeats the uninterrupted one. A refresh is one
    batched QR per factor shape over all layers (``refresh_bases``), queued without a device sync.
    """

    def __init__(self, warmup_steps: int, refresh: str, k: int, interval: int) -> None:
        self.warmup_steps, self.refresh, self.k, self.interval = warmup_steps, refresh, k, interval
        self._checked = False  # phase check done for this run
        self._cache: tuple[weakref.ref, list[tuple[str, LoraLinear, str]]] | None = None

    def layers(self, model: nn.Module) -> list[tuple[str, LoraLinear, str]]:
        """``sds_layers(model)``, walked once per model: a full module walk per refresh costs ~1 ms at 8B."""
        if self._cache is None or self._cache[0]() is not model:
            self._cache = (weakref.ref(model), sds_layers(model))
        return self._cache[1]

    def on_step_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if self._checked or model is None:
            return
        self._checked = True  # first step after a possible resume: the layers' phase must match the step
        expect_on = state.global_step >= self.warmup_steps
        for name, mod, ad in self.layers(model):
            if mod.lora_variant[ad].state(mod, ad).active != expect_on:
                raise ConfigError(
                    f"method.warmup_steps={self.warmup_steps} does not match the resumed checkpoint: at step "
                    f"{state.global_step} layer '{name}' is {'past' if not expect_on else 'still in'} its warm-up; "
                    "resume with the warmup_steps the checkpoint was trained with"
                )

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                    optimizer: Any = None, **kw: Any) -> None:
        if model is None:
            return
        step = state.global_step
        total = state.max_steps if state.max_steps and state.max_steps > 0 else args.max_steps
        if step == self.warmup_steps:
            layers = self.layers(model)
            params = [p for _, m, ad in layers for p in (m.lora_A[ad].weight, m.lora_B[ad].weight)]
            # one-off host check: NonFiniteGuard checks lazily, and the SVD below would fail on NaN with a
            # less useful error than this one
            if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                raise NonFiniteLossError(
                    f"non-finite LoRA factors at the end of SDS-LoRA's warm-up (step {step}): a non-finite gradient "
                    "was applied during the warm-up. Lower trainer.learning_rate or check the data."
                )
            for _, mod, ad in layers:
                mod.lora_variant[ad].transition(mod, ad)
            if optimizer is not None:  # A and B were rewritten: their Adam moments no longer apply
                clear_optimizer_state(optimizer, params)
        elif step > self.warmup_steps and refresh_due(
            step - self.warmup_steps, total - self.warmup_steps, self.refresh, self.k, self.interval
        ):
            refresh_bases([p for _, m, ad in self.layers(model) for p in m.lora_variant[ad].basis_pairs(m, ad)])


def attach_variant(model: nn.Module, variant: type[SDSLinearVariant], adapter: str = "default") -> int:
    """Turn every PEFT ``lora.Linear`` of ``adapter`` into ``variant``; returns how many layers."""
    n, scratch = 0, FusedScratch()  # one scratch for all layers: they run one at a time
    for mod in model.modules():
        if isinstance(mod, LoraLinear) and adapter in mod.lora_A:
            mod.lora_variant[adapter] = variant()
            variant.init(mod, adapter)
            state = variant.state(mod, adapter)
            scratch.reserve(mod.out_features, mod.in_features, state.rank)
            state.scratch = scratch
            n += 1
    return n


@torch.no_grad()
def export_lora_adapter(model: PeftModel, out_dir: Path | str, adapter: str = "default") -> Path:
    """Write a plain PEFT LoRA adapter (B' = [Q_B | B], A' = [A ; Q_Aᵀ], same s) that vanilla PEFT loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = [(name, mod) for name, mod, ad in sds_layers(model) if ad == adapter]
    factors = {name: mod.lora_variant[adapter].factors(mod, adapter) for name, mod in layers}
    new_rank = next(iter(factors.values()))[1].shape[0]  # 2r for SDS (r for the ortho ablation), all layers
    scale = layers[0][1].scaling[adapter]
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()
             if f".{STATE_ATTR}." not in k}
    for name, (b2, a2) in factors.items():  # names come from the PeftModel, as PEFT's keys do
        state[f"{name}.lora_A.weight"] = a2.cpu().contiguous()
        state[f"{name}.lora_B.weight"] = b2.cpu().contiguous()
    config = dataclasses.replace(
        model.peft_config[adapter], r=new_rank, lora_alpha=scale * new_rank, use_rslora=False,
        rank_pattern={}, alpha_pattern={}, inference_mode=True,
    )
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    return out / "adapter_model.safetensors"


# --------------------------------------------------------------------------------------------- the method
@dataclass
class SDSLoRA(LoRA):
    name: str = "sds_lora"
    needs_whole_factors: ClassVar[str] = (
        "its callbacks rewrite A and B in place at the end of the warm-up and orthonormalise the bases from whole "
        "factors between steps")
    # s = alpha/sqrt(rank) ("rslora") or alpha/rank ("lora"); named scale_rule because Method.scaling is taken
    scale_rule: str = "rslora"
    warmup_steps: int = 10
    refresh: str = "phased"
    k: int = 5
    interval: int = 2
    variant: ClassVar[type[SDSLinearVariant]] = SDSLinearVariant
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"use_rslora", "use_dora"})
    warmup_option: ClassVar[str | None] = "warmup_steps"

    def in_warmup(self, model: nn.Module) -> bool:
        layers = sds_layers(model)
        return not (layers and all(mod.lora_variant[ad].state(mod, ad).active for _, mod, ad in layers))

    # costs: docs/methods/sds_lora.md#cost-model
    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        """The fused rank-2r path [Q_B | B]·[A ; Q_Aᵀ]: ∂h over both halves only when the input needs a gradient
        (else the Q_B half that ∇A needs), weight gradients for A and B only (the bases are detached)."""
        m, n, r = out_features, in_features, rank
        grad_h = 2 * m * (2 * r) if input_grad else 2 * m * r
        grad_x = 2 * (2 * r) * n if input_grad else 0
        return LinearFlops(2 * (2 * r) * (m + n), grad_h + grad_x + 2 * r * n + 2 * m * r)

    def periodic_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """The basis refresh: Householder QR of B (m×r) and Aᵀ (n×r), ≈ 2r²(dim − r/3) each, counted as 2r²·dim."""
        return 2 * rank * rank * (in_features + out_features)

    def extra_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """The Q_A, Q_B buffers: fp32, the shapes of A and B."""
        return 4.0 * self.trainable_params(in_features, out_features, rank)

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.scale_rule == "rslora" else self.alpha / self.rank

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        if self.use_dora:
            raise ConfigError(f"method.use_dora=true cannot be combined with {self.name}: valid value is false")
        if self.scale_rule not in SCALE_RULES:
            raise ConfigError(f"method.scale_rule={self.scale_rule!r} is invalid: valid values are {list(SCALE_RULES)}")
        if self.use_rslora and self.scale_rule != "rslora":
            raise ConfigError(
                f"method.use_rslora=true contradicts method.scale_rule={self.scale_rule!r}: "
                "set scale_rule: rslora (and leave use_rslora false)"
            )
        if self.init_lora_weights not in (True, "gaussian"):
            raise ConfigError(
                f"method.init_lora_weights={self.init_lora_weights!r} is invalid for {self.name}: the warm-up "
                "starts from plain LoRA, valid values are true or 'gaussian'"
            )
        for opt, why in (("warmup_steps", " (B = 0 at init leaves Q_B undefined)"), ("k", ""), ("interval", "")):
            value = getattr(self, opt)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"method.{opt}={value!r} is invalid: it must be an integer >= 1{why}")
        if self.refresh not in REFRESH_RULES:
            raise ConfigError(f"method.refresh={self.refresh!r} is invalid: valid values are {list(REFRESH_RULES)}")
        super().validate(model, target_modules)

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        config = super().lora_config(target_modules, modules_to_save)
        config.use_rslora = self.scale_rule == "rslora"
        return config

    def prepare(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str] | None = None,
                calibration: CalibrationBatches | None = None) -> nn.Module:
        peft_model = get_peft_model(model, self.lora_config(target_modules, modules_to_save))
        attach_variant(peft_model, self.variant)
        return peft_model

    def callbacks(self) -> list[Any]:
        return [SDSCallback(self.warmup_steps, self.refresh, self.k, self.interval)]

    def save(self, model: nn.Module, out_dir: Path) -> Path:
        """The standard-LoRA export (rank 2r), loadable by vanilla ``PeftModel.from_pretrained``."""
        assert isinstance(model, PeftModel), f"{self.name}.save expects the PeftModel returned by prepare()"
        return export_lora_adapter(model, out_dir)

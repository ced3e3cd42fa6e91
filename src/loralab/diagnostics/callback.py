"""``DiagnosticsCallback``: SDS-LoRA's mechanism metrics, measured during HF ``Trainer`` training.

Every ``interval`` optimiser steps (and at step 1), for at most ``max_layers`` adapted layers (evenly spread
over depth), the callback records

* ``erank_grad_A``, ``erank_grad_B`` — Roy–Vetterli effective rank of ``lora_A.weight.grad`` /
  ``lora_B.weight.grad`` (0 when that gradient is exactly zero, e.g. ∇A at step 1 with B = 0);
* ``srank_A``, ``srank_B``, ``srank_dW`` — stable ranks; ``norm_dW`` = ‖ΔW‖_F;
* ``align`` — cos(G, G̃) with G = δᵀX from hooks and G̃ = s²(G AᵀA + BBᵀG) (LoRA) or s²(P_B G + G P_A) (SDS);
* ``subspace_A``, ``subspace_B`` — ‖Q_newᵀQ_old‖_F²/r between this and the previous diagnostic step's bases
  of row(A), col(B) (the SDS buffers when the layer has them, else QR of the LoRA factors).

Timing (transformers 5.x ``Trainer._run_epoch``): ``on_step_begin`` runs before the first micro-batch of an
optimiser step — hooks are attached there, only on diagnostic steps; ``on_pre_optimizer_step`` runs after
backward and gradient clipping, before ``optimizer.step()`` — the ``.grad`` fields and the factors are
read there and the hooks removed. Clipping rescales all gradients by one factor, which leaves every metric
(ranks, cosines) unchanged. No extra forward or backward pass is run.

Results: ``callback.records`` is a list of dicts ``{"step", <summary keys>, "layers": {name: {...}}}``;
the summary (NaN-aware mean over the sampled layers, keys prefixed ``diag/``) is also appended to
``state.log_history`` with the same ``"step"`` convention the Trainer uses (the step number after the
update). Layers of other kinds (DoRA, no ``lora_A``/``lora_B``) are ignored; SDS bases are used when found
(see ``find_sds_bases``) and ignored gracefully otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from loralab.diagnostics.metrics import (
    effective_rank,
    orthonormal_basis,
    product_singular_values,
    stable_rank,
    subspace_overlap,
)

BasisGetter = Callable[[nn.Module, str], "tuple[torch.Tensor, torch.Tensor] | None"]

_CONTAINERS = ("lora_sds", "sds", "sds_state")
_NAME_PAIRS = (("q_a", "q_b"), ("sds_QA", "sds_QB"), ("sds_q_a", "sds_q_b"), ("Q_A", "Q_B"), ("QA", "QB"))


def _pick(obj: Any, adapter: str) -> Any:
    if isinstance(obj, (nn.ModuleDict, nn.ParameterDict, dict)) or hasattr(obj, "keys"):
        try:
            return obj[adapter] if adapter in obj.keys() else None
        except (KeyError, TypeError):
            return None
    return obj


def find_sds_bases(module: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(Q_A n×r, Q_B m×r)`` of an SDS-LoRA layer, or None for plain LoRA / SDS still in warm-up.

    Looks in a per-adapter container (``lora_sds``/``sds``/``sds_state``) and on the layer itself for buffer
    pairs named ``q_a/q_b``, ``sds_QA/sds_QB``, ``Q_A/Q_B``, ``QA/QB`` (tensors or adapter-keyed dicts). A
    false ``sds_on`` flag or all-zero bases mean "not active yet"; r×n / r×m storage is transposed.
    """
    places = [_pick(getattr(module, c), adapter) for c in _CONTAINERS if hasattr(module, c)] + [module]
    out_f, in_f = module.lora_B[adapter].weight.shape[0], module.lora_A[adapter].weight.shape[1]
    for place in places:
        if place is None:
            continue
        flag = getattr(place, "sds_on", None)
        if isinstance(flag, torch.Tensor) and flag.numel() == 1 and not bool(flag):
            return None
        for na, nb in _NAME_PAIRS:
            qa, qb = _pick(getattr(place, na, None), adapter), _pick(getattr(place, nb, None), adapter)
            if not (isinstance(qa, torch.Tensor) and isinstance(qb, torch.Tensor)):
                continue
            qa = qa if qa.shape[0] == in_f else qa.T
            qb = qb if qb.shape[0] == out_f else qb.T
            if qa.shape[0] != in_f or qb.shape[0] != out_f or not bool(qb.any()) or not bool(qa.any()):
                return None
            return qa.detach(), qb.detach()
    return None


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules exposing non-empty ``lora_A``/``lora_B`` ModuleDicts (PEFT LoRA layers), by name."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(getattr(mod, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(mod, "lora_B", None), nn.ModuleDict)
        and len(mod.lora_A) > 0
    }


def _active_adapter(module: nn.Module) -> str | None:
    names = list(getattr(module, "active_adapters", []) or []) + list(module.lora_A.keys())
    for name in names:
        if name in module.lora_A and name in module.lora_B:
            if name in getattr(module, "use_dora", {}) and module.use_dora[name]:
                return None  # DoRA's update is not s·B·A: these formulas do not apply
            return name
    return None


def _nanmean(values: list[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return sum(good) / len(good) if good else math.nan


class DiagnosticsCallback(TrainerCallback):
    """Periodic, bounded-cost LoRA/SDS-LoRA mechanism metrics (see module docstring)."""

    def __init__(
        self,
        interval: int = 50,
        max_layers: int = 8,
        alignment: bool = True,
        log_to_trainer: bool = True,
        basis_getter: BasisGetter | None = None,
        keep_full_gradients: bool = False,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if interval < 1 or max_layers < 1:
            raise ValueError(f"interval={interval} and max_layers={max_layers} must be >= 1")
        self.interval, self.max_layers = interval, max_layers
        self.alignment, self.log_to_trainer = alignment, log_to_trainer
        self.basis_getter = basis_getter or find_sds_bases
        self.records: list[dict[str, Any]] = []
        # Receives each record's layer-mean summary (the runner writes it to the step log and wandb).
        self.sink = sink
        # Opt-in: keep the last diagnostic step's captured G per layer (m×n each) for inspection/tests.
        self.keep_full_gradients = keep_full_gradients
        self.full_gradients: dict[str, torch.Tensor] = {}
        self._layers: dict[str, nn.Module] = {}
        self._handles: list[Any] = []
        self._grads: dict[str, torch.Tensor] = {}
        self._prev_bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._active_step: int | None = None

    # ------------------------------------------------------------------ selection
    def is_diagnostic_step(self, step: int) -> bool:
        """Step numbers are 1-based optimiser steps (the Trainer's ``global_step`` after the update)."""
        return step == 1 or step % self.interval == 0

    def _select(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = {n: m for n, m in lora_layers(model).items() if _active_adapter(m) is not None}
        names = list(layers)
        if self.max_layers == 1:
            names = names[:1]
        elif len(names) > self.max_layers:
            # Evenly spread over depth: first and last layer always included.
            idx = sorted({round(i * (len(names) - 1) / (self.max_layers - 1)) for i in range(self.max_layers)})
            names = [names[i] for i in idx]
        return {n: layers[n] for n in names}

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        self._grads = {}
        for name, module in self._layers.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name), with_kwargs=True))

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs.get("x")
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return  # eval / no_grad forward: nothing will flow back
            x_saved = x.detach()

            def on_grad(grad_out: torch.Tensor) -> None:
                # G = δᵀX over all tokens, accumulated over micro-batches and repeated calls of the layer.
                g = grad_out.reshape(-1, grad_out.shape[-1]).float().T @ x_saved.reshape(-1, x_saved.shape[-1]).float()
                self._grads[name] = self._grads[name] + g if name in self._grads else g

            output.register_hook(on_grad)

        return hook

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if model is not None:
            self._layers = self._select(model)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        step = state.global_step + 1
        if not self.is_diagnostic_step(step):
            return
        if not self._layers and model is not None:
            self._layers = self._select(model)
        self._active_step = step
        # Gradient checkpointing re-runs forwards inside backward, which would double-count G: skip alignment.
        if self.alignment and not getattr(args, "gradient_checkpointing", False):
            self._attach()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._active_step is None:
            return
        self._detach()
        record = self.measure(self._active_step)
        self.full_gradients = self._grads if self.keep_full_gradients else {}
        self._grads = {}
        self._active_step = None
        self.records.append(record)
        summary = {k: v for k, v in record.items() if k != "layers"}
        if self.log_to_trainer:
            state.log_history.append(summary)
        if self.sink is not None:
            self.sink(summary)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._detach()

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def measure_layer(self, name: str, module: nn.Module) -> dict[str, float]:
        """All metrics of one layer from its current factors, ``.grad`` fields and captured G."""
        adapter = _active_adapter(module)
        a = module.lora_A[adapter].weight
        b = module.lora_B[adapter].weight
        s = float(module.scaling[adapter])
        bases = self.basis_getter(module, adapter)
        out: dict[str, float] = {"sds": float(bases is not None)}
        out["erank_grad_A"] = effective_rank(a.grad) if a.grad is not None else math.nan
        out["erank_grad_B"] = effective_rank(b.grad) if b.grad is not None else math.nan
        out["srank_A"], out["srank_B"] = stable_rank(a), stable_rank(b)
        A, B = a.float(), b.float()
        if bases is None:
            left, right = B, A  # ΔW = s·B·A
        else:
            qa, qb = bases[0].float(), bases[1].float()
            left, right = torch.cat([qb, B], 1), torch.cat([A, qa.T], 0)  # ΔW = s[Q_B | B][A ; Q_Aᵀ]
        sv = s * product_singular_values(left, right)  # thin QRs + small core: never forms the m×n ΔW
        out["srank_dW"] = stable_rank(sv.diag())
        out["norm_dW"] = float(sv.pow(2).sum().sqrt())
        g = self._grads.get(name)
        out["align"] = math.nan
        if g is not None:
            if bases is None:
                gt = (g @ A.T) @ A + B @ (B.T @ g)
            else:
                gt = qb @ (qb.T @ g) + (g @ qa) @ qa.T
            # s² is a positive factor: the cosine does not depend on it.
            out["align"] = _cos(g, gt)
        new_bases = (qa, qb) if bases is not None else (_basis_or_none(A.T), _basis_or_none(B))
        old = self._prev_bases.get(name)
        out["subspace_A"] = out["subspace_B"] = math.nan
        if old is not None:
            if new_bases[0] is not None and old[0] is not None:
                out["subspace_A"] = subspace_overlap(new_bases[0], old[0])
            if new_bases[1] is not None and old[1] is not None:
                out["subspace_B"] = subspace_overlap(new_bases[1], old[1])
        self._prev_bases[name] = new_bases  # type: ignore[assignment]
        return out

    def measure(self, step: int) -> dict[str, Any]:
        """One record: per-layer metrics and their NaN-aware mean over the sampled layers."""
        layers = {name: self.measure_layer(name, mod) for name, mod in self._layers.items()}
        record: dict[str, Any] = {"step": step}
        keys = sorted({k for m in layers.values() for k in m})
        for k in keys:
            record[f"diag/{k}"] = _nanmean([m[k] for m in layers.values()])
        record["layers"] = layers
        return record


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    nx, ny = float(x.norm()), float(y.norm())
    return float((x * y).sum()) / (nx * ny) if nx > 0 and ny > 0 else math.nan


def _basis_or_none(m: torch.Tensor) -> torch.Tensor | None:
    """Column-space basis, or None while the factor is (numerically) rank-deficient, e.g. B = 0 at init."""
    sv = torch.linalg.svdvals(m.double())
    if sv.numel() == 0 or float(sv[-1]) <= 1e-10 * max(float(sv[0]), 1e-30):
        return None
    return orthonormal_basis(m)

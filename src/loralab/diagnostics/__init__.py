"""Mechanism diagnostics for LoRA-family methods: metrics, a Trainer callback, CPU testbeds and reports.

* ``metrics`` — effective/stable rank, gradient alignment, effective gradients of LoRA and SDS-LoRA, G = δᵀX,
  subspace overlap, update magnitude (definitions in the docstrings);
* ``rank_tools`` — cumulative spectral energy C(r), greedy rank allocation, gradient-subspace overlap κ_t;
* ``callback.DiagnosticsCallback`` — the metrics during HF ``Trainer`` training (imported lazily, so that
  importing this package does not pull in transformers);
* ``loram_mlp``, ``sds_toy``, ``survey_toy`` — CPU reproductions; ``claims`` (and ``claims_embedded`` for the
  LoRA vs SDS-LoRA runs of the embedded task, which :mod:`loralab.figures.embedded_curves` trains) — their
  pass/fail criteria; ``loss_curves`` — smoothing and final loss of a training curve;
  ``report`` — Markdown rendering used by ``scripts/make_figures.py``.
"""
from __future__ import annotations

from typing import Any

from loralab.diagnostics.metrics import (
    cosine_similarity,
    effective_rank,
    full_gradient_from_io,
    lora_effective_gradient,
    sds_effective_gradient,
    stable_rank,
    subspace_overlap,
    update_magnitude,
)
from loralab.diagnostics.rank_tools import (
    GradientSubspaceTracker,
    cumulative_energy,
    gradient_subspace_overlap,
    greedy_rank_allocation,
)

__all__ = [
    "DiagnosticsCallback",
    "GradientSubspaceTracker",
    "cosine_similarity",
    "cumulative_energy",
    "effective_rank",
    "full_gradient_from_io",
    "gradient_subspace_overlap",
    "greedy_rank_allocation",
    "lora_effective_gradient",
    "sds_effective_gradient",
    "stable_rank",
    "subspace_overlap",
    "update_magnitude",
]


def __getattr__(name: str) -> Any:
    if name == "DiagnosticsCallback":
        from loralab.diagnostics.callback import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(f"module 'loralab.diagnostics' has no attribute {name!r}")

"""Rank diagnostics as tools: spectral energy of an update, rank allocation under a parameter budget, and
the overlap of consecutive gradients' dominant subspaces.

Definitions (chosen here; no source fixes them):

* cumulative spectral energy ``C(r) = Σ_{i≤r} σ_i² / Σ_i σ_i²`` of an update ΔW — the fraction of
  ‖ΔW‖_F² a rank-r truncation keeps (Eckart–Young);
* greedy allocation: each extra rank of layer l costs ``d_in + d_out`` parameters (one row of A, one column
  of B) and gains ``σ_{l,k}²`` (optionally divided by the layer's total energy); increments are taken in
  order of gain per parameter while they fit the budget;
* gradient-subspace overlap ``κ_t = ‖U_tᵀ U_{t−1}‖_F² / r`` between the top-r left (or right) singular
  subspaces of consecutive gradients: 1 means the gradient keeps pointing into the same subspace (a
  fixed low-rank adapter would suffice), values near ``r/d`` mean it wanders like random subspaces.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any

import torch

from loralab.diagnostics.metrics import as_f64, singular_values, subspace_overlap

__all__ = [
    "cumulative_energy",
    "rank_for_energy",
    "greedy_rank_allocation",
    "captured_energy",
    "top_singular_subspace",
    "gradient_subspace_overlap",
    "GradientSubspaceTracker",
]


def _spectrum(m_or_sv: Any) -> torch.Tensor:
    """Accept either a matrix or an already computed 1-D vector of singular values (sorted descending)."""
    t = as_f64(m_or_sv)
    if t.ndim == 1:
        return torch.sort(t.abs(), descending=True).values
    return singular_values(t)


def cumulative_energy(m_or_sv: Any) -> torch.Tensor:
    """``C(r)`` for ``r = 1..R`` (index ``r−1``); all zeros for a zero matrix."""
    s2 = _spectrum(m_or_sv).pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return torch.zeros_like(s2)
    return torch.cumsum(s2, 0) / total


def rank_for_energy(m_or_sv: Any, threshold: float) -> int:
    """Smallest r with ``C(r) ≥ threshold`` (threshold in (0, 1]); 0 for a zero matrix."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must lie in (0, 1]")
    c = cumulative_energy(m_or_sv)
    if c.numel() == 0 or float(c[-1]) == 0.0:
        return 0
    # Tolerance: C(R) can land a hair below 1.0 in floating point.
    hits = torch.nonzero(c >= threshold - 1e-12)
    return int(hits[0]) + 1


def greedy_rank_allocation(
    spectra: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, int]],
    budget: int,
    normalize: bool = False,
    max_rank: int | None = None,
) -> dict[str, int]:
    """Allocate per-layer LoRA ranks under a parameter budget, greedily by energy gained per parameter.

    ``spectra[name]`` is the layer's update ΔW (or its singular values), ``shapes[name] = (d_out, d_in)``.
    Rank k of layer l costs ``d_in + d_out`` and gains ``σ_{l,k}²`` (``/ Σ_i σ_{l,i}²`` when ``normalize``,
    so every layer's energy counts equally). Because each layer's gains are non-increasing in k, taking the
    best ratio first is optimal whenever all layers cost the same; with unequal costs it is the usual
    greedy knapsack heuristic. Returns ``{name: rank}`` with ``Σ rank·(d_in+d_out) ≤ budget``.
    """
    if budget < 0:
        raise ValueError(f"budget={budget} must be >= 0")
    gains: dict[str, torch.Tensor] = {}
    for name, m in spectra.items():
        if name not in shapes:
            raise KeyError(f"no shape given for layer '{name}'")
        s2 = _spectrum(m).pow(2)
        limit = min(shapes[name]) if max_rank is None else min(min(shapes[name]), max_rank)
        s2 = s2[:limit]
        if normalize and float(s2.sum()) > 0:
            s2 = s2 / float(_spectrum(m).pow(2).sum())
        gains[name] = s2
    ranks = {name: 0 for name in spectra}
    cost = {name: int(shapes[name][0]) + int(shapes[name][1]) for name in spectra}
    # Max-heap on gain per parameter; ties broken by name for determinism.
    heap = [(-float(g[0]) / cost[n], n) for n, g in gains.items() if g.numel() > 0]
    heapq.heapify(heap)
    left = budget
    while heap:
        neg_ratio, name = heapq.heappop(heap)
        if -neg_ratio <= 0.0:
            break  # remaining increments capture nothing
        if cost[name] > left:
            continue  # all further increments of this layer cost the same, so none fits
        left -= cost[name]
        ranks[name] += 1
        k = ranks[name]
        if k < gains[name].numel():
            heapq.heappush(heap, (-float(gains[name][k]) / cost[name], name))
    return ranks


def captured_energy(spectra: Mapping[str, Any], ranks: Mapping[str, int], normalize: bool = False) -> float:
    """Σ over layers of the energy kept by rank ``ranks[l]`` (the objective the allocation maximises)."""
    total = 0.0
    for name, m in spectra.items():
        s2 = _spectrum(m).pow(2)
        kept = float(s2[: ranks.get(name, 0)].sum())
        total += kept / float(s2.sum()) if normalize and float(s2.sum()) > 0 else kept
    return total


def top_singular_subspace(m: Any, r: int, side: str = "left") -> torch.Tensor:
    """Orthonormal basis (d×r) of the top-r left (``side="left"``) or right singular subspace of ``m``."""
    mat = as_f64(m)
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    if side == "left":
        return u[:, :r]
    if side == "right":
        return vh[:r].T
    raise ValueError(f"side={side!r} must be 'left' or 'right'")


def gradient_subspace_overlap(g_prev: Any, g_curr: Any, r: int, side: str = "left") -> float:
    """``κ_t = ‖U_tᵀ U_{t−1}‖_F² / r`` for the top-r subspaces of two gradients (``side``: left/right/both).

    ``both`` averages the left and right overlaps.
    """
    if side == "both":
        return 0.5 * (
            gradient_subspace_overlap(g_prev, g_curr, r, "left")
            + gradient_subspace_overlap(g_prev, g_curr, r, "right")
        )
    return subspace_overlap(top_singular_subspace(g_curr, r, side), top_singular_subspace(g_prev, r, side))


class GradientSubspaceTracker:
    """Feeds consecutive gradients and returns κ_t (NaN for the first); keeps only the previous bases."""

    def __init__(self, r: int, side: str = "left") -> None:
        if side not in ("left", "right", "both"):
            raise ValueError(f"side={side!r} must be 'left', 'right' or 'both'")
        self.r, self.side = r, side
        self._prev: dict[str, torch.Tensor] = {}
        self.history: list[float] = []

    def update(self, g: Any) -> float:
        sides = ("left", "right") if self.side == "both" else (self.side,)
        bases = {s: top_singular_subspace(g, self.r, s) for s in sides}
        if self._prev:
            kappa = sum(subspace_overlap(bases[s], self._prev[s]) for s in sides) / len(sides)
        else:
            kappa = math.nan
        self._prev = bases
        self.history.append(kappa)
        return kappa

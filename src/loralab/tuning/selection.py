"""The selection rule of ``make tune-lr`` (and of the embedded claim g), apart from any training.

Rule, fixed before any measurement: the lr with the lowest score wins (the score is the proxy's held-out loss;
non-finite scores — a diverged run — count as +inf; exact ties go to the smaller lr). When the winner is the
smallest or largest of at least two grid points the optimum may lie outside the grid, so the grid is extended
by one step of the 1–3–10 sequence past that edge (``extend_lr``), one point at a time while the winner stays
on the edge, at most ``extend`` times; a winner still on an edge afterwards is reported as such.
"""
from __future__ import annotations

import math
from typing import Mapping

__all__ = ["RULE", "select_lr", "extend_lr"]

RULE = ("lowest held-out loss (non-finite = diverged = worst; exact ties: the smaller lr); a winner on a grid "
        "edge extends the grid by one 1-3-10 step past it, up to `extend` times")


def select_lr(scores: Mapping[float, float]) -> tuple[float, str | None]:
    """The lr with the lowest score (exact ties: the smaller lr) and whether it lies on an edge of the grid.

    Returns ``(lr, edge)`` with ``edge`` ``"low"``/``"high"`` when the best lr is the smallest/largest of at
    least two grid points — the optimum may then lie outside the grid — and None otherwise.
    """
    if not scores:
        raise ValueError("no learning rates to select from")
    lrs = sorted(scores)
    clean = {lr: (s if math.isfinite(s) else math.inf) for lr, s in scores.items()}
    best = min(lrs, key=lambda lr: clean[lr])
    if len(lrs) < 2:
        return best, None
    return best, "low" if best == lrs[0] else "high" if best == lrs[-1] else None


def extend_lr(lr: float, side: str) -> float:
    """The neighbour of ``lr`` past ``side`` ("low"/"high") in the 1–3–10 sequence (…, 3e-4, 1e-3, 3e-3, …)."""
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', not {side!r}")
    target = math.log10(lr) + (0.5 if side == "high" else -0.5)
    k = math.floor(target)
    cands = [float(f"{m}e{e}") for e in (k - 1, k, k + 1) for m in (1, 3)]
    return min(cands, key=lambda c: abs(math.log10(c) - target))

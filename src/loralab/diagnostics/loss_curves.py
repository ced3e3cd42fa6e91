"""Loss-curve statistics shared by the figure runs and their claims: smoothing and the final loss."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FINAL_FRAC = 0.1  # "final loss" = mean over the last 10 % of steps (single-step losses are mini-batch noise)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, NaN-aware, shrinking at the ends (no padding bias)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or x.size == 0:
        return x.copy()
    good = ~np.isnan(x)
    kernel = np.ones(int(window))
    total = np.convolve(np.where(good, x, 0.0), kernel, mode="same")
    count = np.convolve(good.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def final_loss(loss: Sequence[float], frac: float = FINAL_FRAC) -> float:
    """Mean of the last ``frac`` of the per-step losses (at least one); NaN/inf (a diverged run) → inf."""
    x = np.asarray(loss, dtype=float)
    if x.size == 0:
        return math.inf
    value = float(x[-max(1, int(x.size * frac)):].mean())
    return value if math.isfinite(value) else math.inf

"""The LoRA survey's matrix-factorisation testbed ``min ½‖XYᵀ − M‖_F²``
(docs/methods/diagnostics.md#survey-testbed).

Survey notation: X ↔ B (m×r), Y ↔ Aᵀ (n×r), ``R = XYᵀ − M``, ``∇_X = RY``, ``∇_Y = RᵀX``. Algorithms (all
with simultaneous updates, i.e. both gradients at the same point):

* GD:        ``X ← X − η RY``,                 ``Y ← Y − η RᵀX``;
* ScaledGD:  ``X ← X − η RY (YᵀY)⁻¹``,         ``Y ← Y − η RᵀX (XᵀX)⁻¹`` (pseudo-inverse when singular);
* RefLoRA:   ``X ← X − η RY S⁻¹``,             ``Y ← Y − η RᵀX S`` with ``S = P_X^{-1/2}(P_X^{1/2} P_Y
  P_X^{1/2})^{1/2} P_X^{-1/2}``, ``P_X = XᵀX``, ``P_Y = YᵀY`` (geometric mean of P_X⁻¹ and P_Y, i.e. GD on
  the balanced pair X S^{1/2}, Y S^{-1/2}).

Initialisations: Gaussian (X₀, Y₀ i.i.d. N(0, σ₀²)) and Nyström (X₀ = MΦ with Gaussian Φ ∈ R^{n×r}, Y₀ = 0;
the survey prints Φ ∈ R^{r×r}, which cannot multiply M — INFERRED n×r).

``scalar_one_step`` reproduces the survey's Examples 3 and 4 symbolically (sympy) on ``f(x, y) = ½(xy − 1)²``
from ``(x, y) = (1, 4)``.
"""
from __future__ import annotations

import math
import numpy as np

__all__ = [
    "make_target",
    "init_factors",
    "step",
    "iterations_to_tol",
    "best_iterations",
    "convergence_curve",
    "nystrom_vs_gaussian",
    "optimizer_comparison",
    "scalar_one_step",
]

ALGORITHMS = ("gd", "scaledgd", "reflora")


def make_target(m: int, n: int, r: int, kappa: float, seed: int = 0) -> np.ndarray:
    """Rank-r M with singular values geometric from 1 down to 1/κ."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * kappa ** (-np.linspace(0.0, 1.0, r))) @ v.T


def init_factors(
    target: np.ndarray, r: int, kind: str, scale: float, seed: int = 1, imbalance: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian: X₀ ~ N(0, (scale·imbalance)²), Y₀ ~ N(0, (scale/imbalance)²); Nyström: X₀ = MΦ, Y₀ = 0."""
    rng = np.random.default_rng(seed)
    m, n = target.shape
    if kind == "gaussian":
        return scale * imbalance * rng.standard_normal((m, r)), scale / imbalance * rng.standard_normal((n, r))
    if kind == "nystrom":
        return target @ (scale * rng.standard_normal((n, r))), np.zeros((n, r))
    raise ValueError(f"kind={kind!r} must be 'gaussian' or 'nystrom'")


def _spd_power(p: np.ndarray, power: float) -> np.ndarray:
    w, q = np.linalg.eigh((p + p.T) / 2)
    w = np.clip(w, 1e-300, None)
    return (q * w**power) @ q.T


def _geometric_mean_s(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """``S = P_X^{-1/2} (P_X^{1/2} P_Y P_X^{1/2})^{1/2} P_X^{-1/2}`` (so that S P_X S = P_Y)."""
    h, hi = _spd_power(px, 0.5), _spd_power(px, -0.5)
    return hi @ _spd_power(h @ py @ h, 0.5) @ hi


def step(x: np.ndarray, y: np.ndarray, target: np.ndarray, lr: float, algo: str) -> tuple[np.ndarray, np.ndarray]:
    """One iteration of ``algo`` on ½‖XYᵀ − M‖²."""
    r_mat = x @ y.T - target
    gx, gy = r_mat @ y, r_mat.T @ x
    if algo == "gd":
        return x - lr * gx, y - lr * gy
    if algo == "scaledgd":
        return x - lr * gx @ np.linalg.pinv(y.T @ y), y - lr * gy @ np.linalg.pinv(x.T @ x)
    if algo == "reflora":
        s = _geometric_mean_s(x.T @ x, y.T @ y)
        return x - lr * gx @ np.linalg.inv(s), y - lr * gy @ s
    raise ValueError(f"algo={algo!r} must be one of {ALGORITHMS}")


def _loss(x: np.ndarray, y: np.ndarray, target: np.ndarray) -> float:
    return 0.5 * float(((x @ y.T - target) ** 2).sum())


def iterations_to_tol(
    target: np.ndarray, x0: np.ndarray, y0: np.ndarray, lr: float, algo: str, tol: float = 1e-6,
    max_iter: int = 20000, patience: int = 3000,
) -> int | None:
    """Iterations until ``f ≤ tol·‖M‖²/2``; None if diverged, stuck for ``patience`` or over ``max_iter``."""
    x, y = x0.copy(), y0.copy()
    f0 = 0.5 * float((target**2).sum())
    best, last_gain = math.inf, 0
    for t in range(max_iter + 1):
        f = _loss(x, y, target)
        if f <= tol * f0:
            return t
        if f < 0.99 * best:
            best, last_gain = f, t
        if not math.isfinite(f) or f > 1e3 * f0 or t - last_gain > patience or t == max_iter:
            return None
        x, y = step(x, y, target, lr, algo)
    return None


def best_iterations(
    target: np.ndarray, x0: np.ndarray, y0: np.ndarray, algo: str, lrs: list[float], tol: float = 1e-6,
    max_iter: int = 20000,
) -> tuple[int | None, float]:
    """Fewest iterations over a step-size grid (runs that cannot beat the best so far are cut short)."""
    best, best_lr = None, math.nan
    for lr in sorted(lrs, reverse=True):
        cap = max_iter if best is None else best - 1
        if cap < 0:
            break
        k = iterations_to_tol(target, x0, y0, lr, algo, tol, cap)
        if k is not None:
            best, best_lr = k, lr
    return best, best_lr


def convergence_curve(
    target: np.ndarray, x0: np.ndarray, y0: np.ndarray, lr: float, algo: str, iters: int
) -> list[float]:
    """Relative loss ``f_t / f(0, 0)`` for ``t = 0..iters`` (for the figures)."""
    x, y = x0.copy(), y0.copy()
    f0 = 0.5 * float((target**2).sum())
    out = []
    for _ in range(iters + 1):
        out.append(_loss(x, y, target) / f0)
        x, y = step(x, y, target, lr, algo)
    return out


def _lr_grid() -> list[float]:
    return [2.0 ** (-k / 2) for k in range(-2, 17)]


def _sweep(
    kappas: tuple[float, ...], runs: dict[str, tuple[str, str, float]], m: int, n: int, r: int,
    scales: tuple[float, ...], tol: float, max_iter: int, seed: int, lrs: tuple[float, ...] | None = None,
) -> dict[str, object]:
    """Per run label and κ: fewest iterations over step sizes *and* init scales (each method at its best)."""
    out: dict[str, object] = {"kappa": list(kappas)}
    grid = list(lrs) if lrs else _lr_grid()
    for label, (algo, init, imbalance) in runs.items():
        its, best_lrs, scs = [], [], []
        for kappa in kappas:
            target = make_target(m, n, r, kappa, seed)
            best: tuple[int | None, float, float] = (None, math.nan, math.nan)
            for scale in scales:
                x0, y0 = init_factors(target, r, init, scale, seed + 1, imbalance)
                cap = max_iter if best[0] is None else best[0]
                k, lr = best_iterations(target, x0, y0, algo, grid, tol, cap)
                if k is not None and (best[0] is None or k < best[0]):
                    best = (k, lr, scale)
            its.append(best[0])
            best_lrs.append(best[1])
            scs.append(best[2])
        out[f"{label}_iters"], out[f"{label}_lr"], out[f"{label}_scale"] = its, best_lrs, scs
        ok = [(kp, k) for kp, k in zip(kappas, its) if k]
        out[f"{label}_slope"] = (
            float(np.polyfit(np.log([a for a, _ in ok]), np.log([b for _, b in ok]), 1)[0]) if len(ok) >= 2
            else math.nan
        )
    return out


def nystrom_vs_gaussian(
    kappas: tuple[float, ...] = (2, 5, 10, 20, 50), m: int = 40, n: int = 30, r: int = 4,
    scales: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0), tol: float = 1e-6, max_iter: int = 20000, seed: int = 0,
    lrs: tuple[float, ...] | None = None,
) -> dict[str, object]:
    """Survey Fig. 8: GD iterations to tolerance from Gaussian vs Nyström initialisation, per κ.

    The init scale (σ₀ of the Gaussian, of Φ for Nyström) is tuned per κ like the step size, so neither
    initialisation loses by an unlucky scale.
    """
    runs = {"gd_gaussian": ("gd", "gaussian", 1.0), "gd_nystrom": ("gd", "nystrom", 1.0)}
    return _sweep(kappas, runs, m, n, r, scales, tol, max_iter, seed, lrs)


def optimizer_comparison(
    kappas: tuple[float, ...] = (2, 5, 10, 20), m: int = 40, n: int = 30, r: int = 4, scale: float = 0.1,
    imbalances: tuple[float, ...] = (1.0, 4.0), tol: float = 1e-6, max_iter: int = 20000, seed: int = 0,
    lrs: tuple[float, ...] | None = None,
) -> dict[str, object]:
    """Survey Fig. 10: GD vs ScaledGD vs RefLoRA from one Gaussian init, balanced (X, Y of equal scale) and
    imbalanced (X ×c, Y ÷c — same product), per κ. Labels: ``<algo>_c<imbalance>``."""
    runs = {f"{a}_c{c:g}": (a, "gaussian", c) for c in imbalances for a in ALGORITHMS}
    return _sweep(kappas, runs, m, n, r, (scale,), tol, max_iter, seed, lrs)


def scalar_one_step(algo: str) -> dict[str, object]:
    """Examples 3/4: one step on ``f = ½(xy − 1)²`` from (1, 4), symbolically in η.

    Returns the simplified product ``x⁺y⁺`` (sympy expression), the step sizes at which the new loss is
    exactly 0, and a float evaluator built from the *numeric* ``step`` implementation above (1×1 matrices),
    so a test can check that code and algebra agree.
    """
    import sympy as sp

    eta = sp.symbols("eta", positive=True)
    x, y = sp.Integer(1), sp.Integer(4)
    res = x * y - 1
    gx, gy = res * y, res * x
    if algo == "gd":
        xn, yn = x - eta * gx, y - eta * gy
    elif algo == "scaledgd":
        xn, yn = x - eta * gx / y**2, y - eta * gy / x**2
    elif algo == "reflora":
        s = sp.sqrt(y**2 / x**2)  # scalar geometric mean of P_X⁻¹ = 1/x² and P_Y = y²
        xn, yn = x - eta * gx / s, y - eta * gy * s
    else:
        raise ValueError(f"algo={algo!r} must be one of {ALGORITHMS}")
    prod = sp.expand(xn * yn)
    zeros = sorted(sp.solve(sp.Eq(prod, 1), eta))

    def numeric(lr: float) -> float:
        xs, ys = step(np.array([[1.0]]), np.array([[4.0]]), np.array([[1.0]]), lr, algo)
        return float(xs[0, 0] * ys[0, 0])

    return {"eta": eta, "product": prod, "zero_loss_eta": zeros, "numeric": numeric}

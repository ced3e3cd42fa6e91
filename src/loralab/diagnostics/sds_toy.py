"""Standalone SDS-LoRA vs LoRA testbeds (numpy, float64): Theorem 3.2 and Figure 1 of the SDS-LoRA paper.

SDS-LoRA is re-implemented here on purpose (no import of ``loralab.methods``): ΔW = s(Q_B A + B Q_Aᵀ) with
Q_B = qr(B).Q, Q_A = qr(Aᵀ).Q held constant in the gradient and refreshed after every ``refresh`` steps,
columns sign-aligned with the previous basis (docs/methods/sds_lora.md#bases).

1. ``kappa_sweep`` — Theorem 3.2 (LoRA's linear rate degrades with the condition number κ of the factors,
   SDS-LoRA's does not). Problem: ``min ½‖ΔW − M*‖_F²`` (factorisation) or ``½‖𝒜(ΔW) − y‖²/N`` (Gaussian
   sensing). Initial factors ``B₀ = U diag(σ)``, ``A₀ = diag(σ) Vᵀ`` with σ geometric from 1 to 1/κ, so
   κ(A₀) = κ(B₀) = κ. The target is the method's own ΔW₀ moved by a small rank-r offset (core perturbation
   ``offset`` and subspace rotation ``rotation``, both × 1/κ² so the factors' conditioning persists —
   the theorem is local, near the starting point). Reported: the fewest steps to reach
   ``L ≤ tol·L₀`` over a step-size grid (each method at its best step size) and the slope of log-steps
   vs log-κ.
2. ``gradient_rank_run`` — Figure 1: a linear layer fine-tuned on a regression teacher with a full-rank
   update, trained with Adam by LoRA and by SDS-LoRA (10 LoRA warm-up steps, then the function-preserving
   SVD split A = ΣVᵀ/(2s), B = UΣ/(2s), Adam state reset). Along training it records the effective rank of
   the factor gradients for LoRA (``s BᵀG``), LoRA without the scaling (``s Q_BᵀG`` at LoRA's state) and
   SDS-LoRA, plus cos(G, G̃), stable ranks of LoRA's factors and SDS basis overlaps (Figs. 3–5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loralab.diagnostics.metrics import (
    cosine_similarity,
    effective_rank,
    lora_effective_gradient,
    sds_effective_gradient,
    stable_rank,
    subspace_overlap,
)
from loralab.diagnostics.rank_tools import GradientSubspaceTracker

__all__ = [
    "KappaProblem",
    "kappa_problem",
    "steps_to_tol",
    "kappa_sweep",
    "loglog_slope",
    "sds_split",
    "gradient_rank_run",
]


def _orth(x: np.ndarray) -> np.ndarray:
    q, r = np.linalg.qr(x)
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    return q * d


def _aligned_basis(m: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """QR basis of col(m), column signs matched to ``previous`` (a flipped column would jump Q_B A)."""
    q = _orth(m)
    if previous is not None:
        s = np.sign((q * previous).sum(0))
        q = q * np.where(s == 0, 1.0, s)
    return q


@dataclass
class KappaProblem:
    b0: np.ndarray
    a0: np.ndarray
    targets: dict[str, np.ndarray]  # per method: the rank-r target M*
    scaling: float
    sensing: np.ndarray | None  # N × (m·n) Gaussian operator, or None for factorisation


def kappa_problem(
    m: int = 24, n: int = 20, r: int = 4, kappa: float = 4.0, offset: float = 0.3, rotation: float = 0.3,
    scaling: float = 1.0, measurements: int | None = None, seed: int = 0,
) -> KappaProblem:
    rng = np.random.default_rng(seed)
    u, v = _orth(rng.standard_normal((m, r))), _orth(rng.standard_normal((n, r)))
    sv = kappa ** (-np.linspace(0.0, 1.0, r))
    b0, a0 = u * sv, sv[:, None] * v.T
    local = 1.0 / kappa**2
    u_t = _orth(u + rotation * local * rng.standard_normal((m, r)))
    v_t = _orth(v + rotation * local * rng.standard_normal((n, r)))
    core = offset * local * rng.standard_normal((r, r)) / math.sqrt(r)
    # Each method's own ΔW₀ core (LoRA: s·diag(σ²); SDS: s·diag(2σ)), moved by the same offset/rotation.
    targets = {
        "lora": u_t @ (scaling * np.diag(sv**2) + core) @ v_t.T,
        "sds": u_t @ (scaling * np.diag(2 * sv) + core) @ v_t.T,
    }
    sensing = None
    if measurements is not None:
        sensing = rng.standard_normal((measurements, m * n))
    return KappaProblem(b0, a0, targets, scaling, sensing)


def _loss_and_grad(dw: np.ndarray, target: np.ndarray, sensing: np.ndarray | None) -> tuple[float, np.ndarray]:
    diff = dw - target
    if sensing is None:
        return 0.5 * float((diff**2).sum()), diff
    res = sensing @ diff.reshape(-1)
    n_meas = sensing.shape[0]
    return 0.5 * float(res @ res) / n_meas, (sensing.T @ res / n_meas).reshape(diff.shape)


TOY_RULES = ("lora", "sds")  # plain LoRA's gradient step and SDS-LoRA's (bases from the previous refresh)


def steps_to_tol(
    p: KappaProblem, method: str, lr: float, tol: float = 1e-4, max_steps: int = 20000, refresh: int = 1,
    patience: int = 2000,
) -> int | None:
    """Plain GD steps until ``L ≤ tol·L₀``; None if not reached within ``max_steps``, diverged, or no 1 %
    improvement of the best loss for ``patience`` steps."""
    if method not in TOY_RULES:
        raise ValueError(f"method={method!r} must be one of {list(TOY_RULES)}")
    sds = method == "sds"  # the toy's two update rules (not loralab's method classes)
    s, target = p.scaling, p.targets[method]
    a, b = p.a0.copy(), p.b0.copy()
    qb = _aligned_basis(b, None) if sds else None
    qa = _aligned_basis(a.T, None) if sds else None
    l0 = None
    best, last_gain = math.inf, 0
    for t in range(max_steps + 1):
        dw = s * (qb @ a + b @ qa.T) if sds else s * (b @ a)
        loss, g = _loss_and_grad(dw, target, p.sensing)
        l0 = loss if l0 is None else l0
        if loss <= tol * l0:
            return t
        if loss < 0.99 * best:
            best, last_gain = loss, t
        # Diverged, or stuck (a too-large step size can cycle forever without reaching tol).
        if not math.isfinite(loss) or loss > 10 * l0 or t - last_gain > patience or t == max_steps:
            return None
        if sds:
            a, b = a - lr * s * (qb.T @ g), b - lr * s * (g @ qa)
            if (t + 1) % refresh == 0:
                qb, qa = _aligned_basis(b, qb), _aligned_basis(a.T, qa)
        else:
            a, b = a - lr * s * (b.T @ g), b - lr * s * (g @ a.T)
    return None


def _best_steps(p: KappaProblem, method: str, lrs: list[float], tol: float, max_steps: int) -> tuple[int | None, float]:
    best, best_lr = None, math.nan
    for lr in sorted(lrs, reverse=True):
        # A run that cannot beat the current best is cut short: only the minimum matters.
        cap = max_steps if best is None else best - 1
        if cap < 0:
            break
        k = steps_to_tol(p, method, lr, tol, cap)
        if k is not None:
            best, best_lr = k, lr
    return best, best_lr


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def kappa_sweep(
    kappas: tuple[float, ...] = (1, 2, 4, 8, 16), m: int = 24, n: int = 20, r: int = 4, tol: float = 1e-4,
    lrs: tuple[float, ...] | None = None, max_steps: int = 50000, measurements: int | None = None, seed: int = 0,
) -> dict[str, object]:
    """Best-step-size step counts per κ for LoRA and SDS-LoRA, and their log-log slopes."""
    grid = list(lrs) if lrs is not None else [2.0 ** (-k / 2) for k in range(-1, 13)]
    out: dict[str, object] = {"kappa": list(kappas)}
    for method in TOY_RULES:
        steps, best_lrs = [], []
        for kappa in kappas:
            p = kappa_problem(m, n, r, kappa, measurements=measurements, seed=seed)
            k, lr = _best_steps(p, method, grid, tol, max_steps)
            steps.append(k)
            best_lrs.append(lr)
        out[f"{method}_steps"] = steps
        out[f"{method}_lr"] = best_lrs
        ok = [(kp, k) for kp, k in zip(kappas, steps) if k]
        out[f"{method}_slope"] = loglog_slope([a for a, _ in ok], [b for _, b in ok]) if len(ok) >= 2 else math.nan
    return out


def sds_split(a: np.ndarray, b: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warm-up → SDS transition: ``sBA = UΣVᵀ`` (rank r) ↦ ``A = ΣVᵀ/(2s)``, ``B = UΣ/(2s)``, ``Q_A = V``,
    ``Q_B = U``; then ``s(Q_B A + B Q_Aᵀ) = sBA`` exactly (each branch carries half of the update)."""
    r = a.shape[0]
    u, sig, vt = np.linalg.svd(s * b @ a, full_matrices=False)
    u, sig, vt = u[:, :r], sig[:r], vt[:r]
    return sig[:, None] * vt / (2 * s), u * sig / (2 * s), vt.T, u


class _NpAdam:
    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.reset()

    def reset(self) -> None:
        self.t, self.m, self.v = 0, {}, {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.t += 1
        b1, b2 = self.betas
        out = {}
        for k, g in grads.items():
            self.m[k] = b1 * self.m.get(k, 0.0) + (1 - b1) * g
            self.v[k] = b2 * self.v.get(k, 0.0) + (1 - b2) * g * g
            mh, vh = self.m[k] / (1 - b1**self.t), self.v[k] / (1 - b2**self.t)
            out[k] = params[k] - self.lr * mh / (np.sqrt(vh) + self.eps)
        return out


def gradient_rank_run(
    m: int = 64, n: int = 64, r: int = 8, alpha: float = 16.0, steps: int = 300, batch: int = 32, lr: float = 2e-3,
    warmup: int = 10, decay: float = 1.0, noise: float = 0.1, every: int = 5, seed: int = 0,
) -> dict[str, list[float]]:
    """Figure 1 testbed (see module docstring). The teacher update D* has singular values ``i^{-decay}``."""
    rng = np.random.default_rng(seed)
    s = alpha / r
    d_star = _orth(rng.standard_normal((m, m)))[:, : min(m, n)] * (np.arange(1, min(m, n) + 1) ** -decay)
    d_star = d_star @ _orth(rng.standard_normal((n, n)))[:, : min(m, n)].T
    bound = 1.0 / math.sqrt(n)  # PEFT's kaiming-uniform(a=√5) bound for A
    a0 = rng.uniform(-bound, bound, (r, n))
    states = {"lora": {"A": a0.copy(), "B": np.zeros((m, r))}, "sds": {"A": a0.copy(), "B": np.zeros((m, r))}}
    opts = {"lora": _NpAdam(lr), "sds": _NpAdam(lr)}
    bases: dict[str, np.ndarray] = {}
    keys = ["step", "loss_lora", "loss_sds", "erank_A_lora", "erank_B_lora", "erank_A_noscale", "erank_B_noscale",
            "erank_A_sds", "erank_B_sds", "align_lora", "align_sds", "srank_A_lora", "srank_B_lora",
            "overlap_QA_sds", "overlap_QB_sds", "kappa_t_lora"]
    hist: dict[str, list[float]] = {k: [] for k in keys}
    prev_q: tuple[np.ndarray, np.ndarray] | None = None
    tracker = GradientSubspaceTracker(r, side="both")  # κ_t of LoRA's full gradient between records
    for t in range(steps):
        x = rng.standard_normal((batch, n))
        y_noise = noise * rng.standard_normal((batch, m))
        grads_g = {}
        for meth, st in states.items():
            sds_on = meth == "sds" and "QB" in bases
            dw = s * (bases["QB"] @ st["A"] + st["B"] @ bases["QA"].T) if sds_on else s * st["B"] @ st["A"]
            err = x @ (dw - d_star).T - y_noise
            g = err.T @ x / batch  # G = δᵀX / batch for loss ½·mean‖err‖²
            grads_g[meth] = (g, dw, sds_on)
            if sds_on:
                grad = {"A": s * bases["QB"].T @ g, "B": s * g @ bases["QA"]}
            else:
                grad = {"A": s * st["B"].T @ g, "B": s * g @ st["A"].T}
            st.update(opts[meth].step(st, grad))
            if meth == "sds" and sds_on:
                bases["QB"] = _aligned_basis(st["B"], bases["QB"])
                bases["QA"] = _aligned_basis(st["A"].T, bases["QA"])
            if meth == "sds" and t + 1 == warmup:
                st["A"], st["B"], bases["QA"], bases["QB"] = sds_split(st["A"], st["B"], s)
                opts["sds"].reset()
        if t % every or t < 1:
            continue
        gl, dwl, _ = grads_g["lora"]
        gs, dws, sds_on = grads_g["sds"]
        lo = states["lora"]
        hist["step"].append(t)
        hist["loss_lora"].append(0.5 * float(((dwl - d_star) ** 2).sum()))
        hist["loss_sds"].append(0.5 * float(((dws - d_star) ** 2).sum()))
        hist["erank_A_lora"].append(effective_rank(s * lo["B"].T @ gl))
        hist["erank_B_lora"].append(effective_rank(s * gl @ lo["A"].T))
        qb_l, qa_l = _orth(lo["B"]), _orth(lo["A"].T)
        hist["erank_A_noscale"].append(effective_rank(s * qb_l.T @ gl))
        hist["erank_B_noscale"].append(effective_rank(s * gl @ qa_l))
        hist["align_lora"].append(cosine_similarity(gl, lora_effective_gradient(gl, lo["A"], lo["B"], s)))
        hist["srank_A_lora"].append(stable_rank(lo["A"]))
        hist["srank_B_lora"].append(stable_rank(lo["B"]))
        hist["kappa_t_lora"].append(tracker.update(gl))
        if sds_on:
            qb, qa = bases["QB"], bases["QA"]
            hist["erank_A_sds"].append(effective_rank(s * qb.T @ gs))
            hist["erank_B_sds"].append(effective_rank(s * gs @ qa))
            hist["align_sds"].append(cosine_similarity(gs, sds_effective_gradient(gs, qa, qb, s)))
            ov = (subspace_overlap(qa, prev_q[0]), subspace_overlap(qb, prev_q[1])) if prev_q else (math.nan,) * 2
            prev_q = (qa.copy(), qb.copy())
        else:
            hist["erank_A_sds"].append(math.nan)
            hist["erank_B_sds"].append(math.nan)
            hist["align_sds"].append(math.nan)
            ov = (math.nan, math.nan)
        hist["overlap_QA_sds"].append(ov[0])
        hist["overlap_QB_sds"].append(ov[1])
    return hist

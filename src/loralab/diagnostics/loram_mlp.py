"""LoRAM's synthetic 5-layer MLP (docs/methods/diagnostics.md#loram-synthetic-mlp): Proposition 1 (Fig. 2a) and
magnitude dynamics (Fig. 2b).

Setup (the paper gives only width 400, rank 25, SGD/Adam; the rest is INFERRED and fixed here): every one of
the ``depth`` linear layers is a frozen random base ``W_l ~ N(0, 1/fan_in)`` plus a LoRA branch; tanh between
layers; Gaussian inputs; targets from a teacher network whose layers are ``W_l + D_l`` (random D_l of the
same scale, ``teacher_scale``); loss = mean squared error. Everything is float64 so that trajectories can be
compared to 1e-6. Forward of a LoRA layer: ``h ↦ W h + α'(B̃Ã − B̃₀Ã₀) h`` (LoRAM Eq. 1, the initial product
absorbed so the model is unchanged at step 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from loralab.diagnostics.metrics import mean_square

__all__ = [
    "MLPProblem",
    "make_mlp_problem",
    "Reparam",
    "run_lora_mlp",
    "run_linear_mlp",
    "proposition1",
    "magnitude_dynamics",
]

F64 = torch.float64


@dataclass
class MLPProblem:
    weights: list[torch.Tensor]  # frozen bases W_l (out × in)
    x: torch.Tensor  # N × width
    y: torch.Tensor  # N × width
    rank: int
    seed: int


def make_mlp_problem(
    width: int = 400, depth: int = 5, rank: int = 25, n_samples: int = 256, teacher_scale: float = 1.0, seed: int = 0
) -> MLPProblem:
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(width, width, generator=g, dtype=F64) / math.sqrt(width) for _ in range(depth)]
    ds = [teacher_scale * torch.randn(width, width, generator=g, dtype=F64) / math.sqrt(width) for _ in range(depth)]
    x = torch.randn(n_samples, width, generator=g, dtype=F64)
    y = _forward([w + d for w, d in zip(ws, ds)], x)
    return MLPProblem(ws, x, y, rank, seed)


def _forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for i, w in enumerate(weights):
        h = h @ w.T
        if i < len(weights) - 1:
            h = torch.tanh(h)
    return h


def _loss(weights: list[torch.Tensor], p: MLPProblem) -> torch.Tensor:
    return (_forward(weights, p.x) - p.y).pow(2).mean()


@dataclass(frozen=True)
class Reparam:
    """One row of Proposition 1: forward multiplier α', init multipliers α_A, α_B and learning rates."""

    name: str
    alpha_prime: float
    alpha_a: float
    alpha_b: float
    lr_a: float
    lr_b: float


def _init_factors(p: MLPProblem, sigma_a: float, sigma_b: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A_init ~ N(0, σ_A²), B_init ~ N(0, σ_B²) per layer (σ_B = 0 → "Noise & Zeros"); fixed by the seed."""
    g = torch.Generator().manual_seed(p.seed + 1)
    out = []
    for w in p.weights:
        n, m = w.shape
        a = sigma_a * torch.randn(p.rank, m, generator=g, dtype=F64)
        b = sigma_b * torch.randn(n, p.rank, generator=g, dtype=F64)
        out.append((a, b))
    return out


class _Adam:
    """Plain Adam (bias-corrected, no weight decay). ε defaults to 1e-30: Prop. 1 holds for ε → 0."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.999), eps: float = 1e-30):
        self.params, self.lrs, self.betas, self.eps, self.t = params, lrs, betas, eps, 0
        self.m = [torch.zeros_like(q) for q in params]
        self.v = [torch.zeros_like(q) for q in params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for q, lr, m, v in zip(self.params, self.lrs, self.m, self.v):
            m.mul_(b1).add_(q.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(q.grad, q.grad, value=1 - b2)
            mh, vh = m / (1 - b1**self.t), v / (1 - b2**self.t)
            q.sub_(lr * mh / (vh.sqrt() + self.eps))


def _step(params: list[torch.Tensor], lrs: list[float], opt: _Adam | None) -> None:
    if opt is not None:
        opt.step()
        return
    with torch.no_grad():
        for q, lr in zip(params, lrs):
            q.sub_(lr * q.grad)


def run_lora_mlp(
    p: MLPProblem,
    rp: Reparam,
    optimizer: str = "sgd",
    steps: int = 200,
    sigma_a: float | None = None,
    sigma_b: float = 0.0,
    adam_eps: float = 1e-30,
) -> dict[str, list[float]]:
    """Train the LoRA MLP under one re-parameterisation; returns per-step loss, ν[A], ν[B], ν[ΔW] (layer means).

    ``sigma_a`` defaults to ``1/√fan_in`` ("Noise & Zeros" with σ_B = 0). The *effective* factors
    ``A = Ã/α_A``, ``B = B̃/α_B`` are what the magnitudes refer to, so runs are comparable across rows.
    """
    m0 = p.weights[0].shape[1]
    sa = 1.0 / math.sqrt(m0) if sigma_a is None else sigma_a
    init = _init_factors(p, sa, sigma_b)
    a_t = [(rp.alpha_a * a).requires_grad_() for a, _ in init]
    b_t = [(rp.alpha_b * b).requires_grad_() for _, b in init]
    base = [rp.alpha_prime * (b.detach() @ a.detach()) for a, b in zip(a_t, b_t)]
    params = a_t + b_t
    lrs = [rp.lr_a] * len(a_t) + [rp.lr_b] * len(b_t)
    opt = _Adam(params, lrs, eps=adam_eps) if optimizer == "adam" else None
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r} must be 'sgd' or 'adam'")
    hist: dict[str, list[float]] = {"loss": [], "nu_A": [], "nu_B": [], "nu_dW": []}
    for t in range(steps + 1):
        deltas = [rp.alpha_prime * (b @ a) - b0a0 for a, b, b0a0 in zip(a_t, b_t, base)]
        loss = _loss([w + d for w, d in zip(p.weights, deltas)], p)
        hist["loss"].append(loss.item())
        hist["nu_A"].append(sum(mean_square(a / rp.alpha_a) for a in a_t) / len(a_t))
        hist["nu_B"].append(sum(mean_square(b / rp.alpha_b) for b in b_t) / len(b_t))
        hist["nu_dW"].append(sum(mean_square(d) for d in deltas) / len(deltas))
        if t == steps:
            break
        for q in params:
            q.grad = None
        loss.backward()
        _step(params, lrs, opt)
    return hist


def run_linear_mlp(p: MLPProblem, lr: float, steps: int = 200, optimizer: str = "sgd") -> dict[str, list]:
    """Full-rank baseline ("Linear"): every W_l trainable, same init as the frozen bases.

    Besides the per-step history, ``deltas`` holds the final per-layer updates W_l − W_l(0).
    """
    ws = [w.clone().requires_grad_() for w in p.weights]
    opt = _Adam(ws, [lr] * len(ws)) if optimizer == "adam" else None
    hist: dict[str, list] = {"loss": [], "nu_dW": []}
    for t in range(steps + 1):
        loss = _loss(ws, p)
        hist["loss"].append(loss.item())
        hist["nu_dW"].append(sum(mean_square(w - w0) for w, w0 in zip(ws, p.weights)) / len(ws))
        if t == steps:
            break
        for q in ws:
            q.grad = None
        loss.backward()
        _step(ws, [lr] * len(ws), opt)
    hist["deltas"] = [(w - w0).detach() for w, w0 in zip(ws, p.weights)]
    return hist


def proposition1(
    p: MLPProblem, optimizer: str, lr: float, alpha: float = 16.0, steps: int = 200
) -> dict[str, dict[str, object]]:
    """Loss trajectories of Prop. 1's equivalent rows and of rows it excludes, with max deviations.

    Equivalent rows realise α = α'·α_A·α_B with the optimiser's lr rule (SGD: η·α², Adam: η·α). Excluded:
    the paper's "α = 1, η×4" row and the *other* optimiser's lr rule. Returns, per row, its loss trajectory,
    ``max_abs_diff`` to the reference row (α' = α, α_A = α_B = 1) and whether Prop. 1 declares it equivalent.
    """
    power = 2 if optimizer == "sgd" else 1
    other = 1 if power == 2 else 2

    def row(name: str, ap: float, aa: float, ab: float, pw: int) -> Reparam:
        return Reparam(name, ap, aa, ab, lr * aa**pw, lr * ab**pw)

    rows = {
        "reference (α'=α)": (row("ref", alpha, 1, 1, power), True),
        "α'=1, α_A=α_B=√α": (row("a", 1, math.sqrt(alpha), math.sqrt(alpha), power), True),
        # Non-power-of-two multipliers, so agreement is not a bitwise accident of exact float scaling.
        "α'=α/2.1, α_A=3, α_B=0.7": (row("b", alpha / 2.1, 3, 0.7, power), True),
        "α'=5α, α_A=0.2, α_B=1": (row("c", 5 * alpha, 0.2, 1, power), True),
        "α=1, η×4 (paper's deviating row)": (Reparam("d", 1, 1, 1, 4 * lr, 4 * lr), False),
        "α'=1, α_A=α_B=√α, other lr rule": (row("e", 1, math.sqrt(alpha), math.sqrt(alpha), other), False),
    }
    out: dict[str, dict[str, object]] = {}
    ref = None
    for name, (rp, equivalent) in rows.items():
        h = run_lora_mlp(p, rp, optimizer, steps)
        ref = h["loss"] if ref is None else ref
        diff = max(abs(x - y) for x, y in zip(h["loss"], ref))
        out[name] = {"loss": h["loss"], "max_abs_diff": diff, "equivalent": equivalent, "nu_dW": h["nu_dW"]}
    return out


def magnitude_dynamics(
    p: MLPProblem, lr: float, steps: int = 200, init_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
) -> dict[str, dict[str, object]]:
    """ν[A], ν[B], ν[ΔW] over SGD training for several init magnitudes, and a full-rank "Linear" baseline.

    Scale c = 1 is "Noise & Zeros" (σ_A² = 1/m, B = 0, k1 = r/m); c > 1 uses σ_A² = σ_B² = c/m, for which
    Eq. 6 gives ``k1 = r(mσ_A⁴ + nσ_B⁴) = 2c²r/m`` (square layers). α = 1 throughout (LoRAM's convention).
    """
    n, m = p.weights[0].shape
    out: dict[str, dict[str, object]] = {}
    for c in init_scales:
        sa = math.sqrt(c / m)
        sb = 0.0 if c == 1.0 else math.sqrt(c / n)
        k1 = p.rank * (m * sa**4 + n * sb**4)
        h = run_lora_mlp(p, Reparam(f"c={c}", 1.0, 1.0, 1.0, lr, lr), "sgd", steps, sigma_a=sa, sigma_b=sb)
        out[f"LoRA c={c:g}"] = {**h, "k1": k1}
    out["Linear"] = {**run_linear_mlp(p, lr, steps), "k1": 1.0}
    return out

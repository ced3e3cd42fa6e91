"""Mechanism metrics of LoRA-family updates (docs/methods/diagnostics.md; LoRAM's magnitude:
docs/methods/loram.md#magnitude).

The SDS-LoRA paper's own definitions were not available (NOT FOUND, docs/methods/diagnostics.md#metric-definitions);
every function states the definition it implements. All functions take torch tensors (numpy arrays are converted) and
compute in float64 so that tiny spectra do not drown in rounding error; they return Python floats or
float64 tensors.

Shapes follow PyTorch/PEFT: ``W ∈ R^{m×n}`` (out × in), ``B ∈ R^{m×r}`` (``lora_B.weight``),
``A ∈ R^{r×n}`` (``lora_A.weight``), ``G = ∂L/∂W_eff ∈ R^{m×n}``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "as_f64",
    "singular_values",
    "product_singular_values",
    "effective_rank",
    "stable_rank",
    "cosine_similarity",
    "lora_effective_gradient",
    "sds_effective_gradient",
    "lora_factor_gradients",
    "sds_factor_gradients",
    "full_gradient_from_io",
    "orthonormal_basis",
    "subspace_overlap",
    "update_magnitude",
    "mean_square",
]


def as_f64(x: Any) -> torch.Tensor:
    """Detached float64 CPU copy of a tensor / array (metrics never touch the autograd graph)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.to(device="cpu", dtype=torch.float64)


def singular_values(m: Any) -> torch.Tensor:
    """Singular values of a matrix (descending), float64."""
    mat = as_f64(m)
    if mat.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(mat.shape)}")
    return torch.linalg.svdvals(mat)


def product_singular_values(left: Any, right: Any) -> torch.Tensor:
    """Singular values of ``left @ right`` (m×k times k×n, k small) without forming the m×n product.

    QR of both thin factors, then the SVD of the k×k core ``R_l R_rᵀ``: O((m+n)k²) instead of O(mn·min(m,n)).
    """
    L, R = as_f64(left), as_f64(right)
    if L.shape[1] != R.shape[0]:
        raise ValueError(f"inner dimensions differ: {tuple(L.shape)} @ {tuple(R.shape)}")
    _, rl = torch.linalg.qr(L, mode="reduced")
    _, rr = torch.linalg.qr(R.T, mode="reduced")
    return torch.linalg.svdvals(rl @ rr.T)


def effective_rank(m: Any) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j``.

    ``H`` is the Shannon entropy (natural log, ``0·log 0 = 0``). Ranges over ``[1, min(shape)]`` for a
    non-zero matrix: ``n`` for the n×n identity, 1 for any rank-1 matrix. A zero matrix returns 0.0 (the
    entropy is undefined there; 0 keeps averages finite and flags "no gradient").
    """
    s = singular_values(m)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(m: Any) -> float:
    """Stable rank ``‖M‖_F² / ‖M‖_2²`` (0.0 for the zero matrix). 1 for rank-1, n for an orthogonal n×n."""
    s = singular_values(m)
    top = float(s[0]) if s.numel() else 0.0
    if top == 0.0:
        return 0.0
    return float((s**2).sum()) / top**2


def cosine_similarity(x: Any, y: Any) -> float:
    """Frobenius cosine ``⟨X, Y⟩_F / (‖X‖_F ‖Y‖_F)``; NaN when either is zero (undefined, not "orthogonal")."""
    a, b = as_f64(x), as_f64(y)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(a @ b) / (na * nb)


def lora_effective_gradient(g: Any, a: Any, b: Any, scaling: float) -> torch.Tensor:
    """``G̃_LoRA = s²(G AᵀA + B Bᵀ G)``: first-order change of ``s·B·A`` under one plain GD step, / −η.

    Equals ``s²(G V_A Σ_A² V_Aᵀ + U_B Σ_B² U_Bᵀ G)`` (docs/methods/sds_lora.md#gradient-distortion): the
    singular values of the factors enter squared, which is the anisotropic scaling SDS-LoRA removes.
    """
    G, A, B = as_f64(g), as_f64(a), as_f64(b)
    return scaling**2 * (G @ A.T @ A + B @ (B.T @ G))


def sds_effective_gradient(g: Any, q_a: Any, q_b: Any, scaling: float) -> torch.Tensor:
    """``G̃_SDS = s²(P_B G + G P_A)`` with ``P_B = Q_B Q_Bᵀ``, ``P_A = Q_A Q_Aᵀ``
    (docs/methods/sds_lora.md#parameterisation).

    ``q_a`` is n×r (orthonormal basis of row(A)), ``q_b`` is m×r (basis of col(B)).
    """
    G, QA, QB = as_f64(g), as_f64(q_a), as_f64(q_b)
    return scaling**2 * (QB @ (QB.T @ G) + (G @ QA) @ QA.T)


def lora_factor_gradients(g: Any, a: Any, b: Any, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_A, ∇_B) = (s Bᵀ G, s G Aᵀ)`` — what backprop gives LoRA's factors for a given full gradient."""
    G, A, B = as_f64(g), as_f64(a), as_f64(b)
    return scaling * B.T @ G, scaling * G @ A.T


def sds_factor_gradients(g: Any, q_a: Any, q_b: Any, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_A, ∇_B) = (s Q_Bᵀ G, s G Q_A)`` — SDS-LoRA's factor gradients (no singular values of A, B)."""
    G, QA, QB = as_f64(g), as_f64(q_a), as_f64(q_b)
    return scaling * QB.T @ G, scaling * G @ QA


def full_gradient_from_io(x: Any, grad_out: Any) -> torch.Tensor:
    """Gradient of the loss w.r.t. a linear layer's weight: ``G = δᵀX`` summed over all tokens.

    ``x`` has shape (..., n) (the layer input), ``grad_out`` shape (..., m) (∂L/∂output); every leading
    dimension (batch, sequence) is a "token". Returns the m×n matrix in float64.
    """
    X, D = as_f64(x), as_f64(grad_out)
    if X.shape[:-1] != D.shape[:-1]:
        raise ValueError(f"input {tuple(X.shape)} and output gradient {tuple(D.shape)} disagree on tokens")
    return D.reshape(-1, D.shape[-1]).T @ X.reshape(-1, X.shape[-1])


def orthonormal_basis(m: Any, transpose: bool = False) -> torch.Tensor:
    """Orthonormal basis of the column space of ``m`` (of ``mᵀ`` if ``transpose``), by reduced QR.

    For LoRA: ``orthonormal_basis(B)`` spans col(B) (m×r) and ``orthonormal_basis(A, transpose=True)``
    spans row(A) (n×r) — the ``Q_B``, ``Q_A`` of SDS-LoRA. Column signs are made to give a non-negative
    diagonal of R so the basis is a continuous function of a full-rank input.
    """
    mat = as_f64(m)
    mat = mat.T if transpose else mat
    q, r = torch.linalg.qr(mat, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def subspace_overlap(q_new: Any, q_old: Any) -> float:
    """``‖Q_newᵀ Q_old‖_F² / k`` with ``k = min(#cols)``: mean squared cosine of the principal angles.

    Both inputs must have orthonormal columns. 1 when the spans coincide (or the smaller lies in the
    larger), 0 when orthogonal; invariant to rotations/sign flips inside each span, unlike a column-wise
    cosine.
    """
    Qn, Qo = as_f64(q_new), as_f64(q_old)
    if Qn.shape[0] != Qo.shape[0]:
        raise ValueError(f"bases live in different spaces: {tuple(Qn.shape)} vs {tuple(Qo.shape)}")
    k = min(Qn.shape[1], Qo.shape[1])
    if k == 0:
        return math.nan
    return float((Qn.T @ Qo).pow(2).sum()) / k


def update_magnitude(delta_w: Any) -> float:
    """``‖ΔW‖_F``."""
    return float(as_f64(delta_w).norm())


def mean_square(m: Any) -> float:
    """LoRAM's magnitude ``ν[M] = ‖M‖_F² / #entries`` (docs/methods/loram.md#magnitude)."""
    t = as_f64(m)
    return float(t.pow(2).mean()) if t.numel() else 0.0

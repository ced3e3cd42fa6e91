"""Known answers for the mechanism metrics, and cross-checks of each formula against autograd."""
from __future__ import annotations

import math

import pytest
import torch

from loralab.diagnostics.metrics import (
    cosine_similarity,
    effective_rank,
    full_gradient_from_io,
    lora_effective_gradient,
    lora_factor_gradients,
    mean_square,
    orthonormal_basis,
    product_singular_values,
    sds_effective_gradient,
    sds_factor_gradients,
    stable_rank,
    subspace_overlap,
    update_magnitude,
)

F64 = torch.float64


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _orth(d: int, r: int, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(_rand(d, r, seed=seed))[0]


# ------------------------------------------------------------------ ranks
def test_effective_rank_known_values() -> None:
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0, rel=1e-12)
    assert effective_rank(torch.outer(_rand(5), _rand(9, seed=1))) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(torch.zeros(3, 4)) == 0.0
    # diag(3, 1): p = (3/4, 1/4) from singular values (a σ²-based formula would give p = (0.9, 0.1)).
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(h), rel=1e-12)


def test_effective_rank_invariances() -> None:
    m = _rand(6, 4)
    q1, q2 = _orth(6, 6, seed=3), _orth(4, 4, seed=4)
    assert effective_rank(5.0 * m) == pytest.approx(effective_rank(m), rel=1e-12)
    assert effective_rank(q1 @ m @ q2) == pytest.approx(effective_rank(m), rel=1e-10)
    assert 1.0 <= effective_rank(m) <= 4.0


def test_stable_rank_known_values() -> None:
    assert stable_rank(torch.eye(5)) == pytest.approx(5.0)
    assert stable_rank(torch.outer(_rand(4), _rand(6, seed=2))) == pytest.approx(1.0, abs=1e-12)
    assert stable_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(1.25)  # (4 + 1) / 4
    assert stable_rank(torch.zeros(2, 2)) == 0.0


def test_product_singular_values_matches_dense_svd() -> None:
    for m, k, n in ((20, 4, 15), (3, 6, 9), (12, 5, 2)):
        left, right = _rand(m, k, seed=m), _rand(k, n, seed=n)
        expected = torch.linalg.svdvals(left @ right)
        got = product_singular_values(left, right)
        kk = min(len(expected), len(got))
        assert torch.allclose(got[:kk], expected[:kk], atol=1e-10)
        assert torch.all(expected[kk:] < 1e-10) and torch.all(got[kk:] < 1e-10)


# ------------------------------------------------------------------ cosine and magnitudes
def test_cosine_similarity() -> None:
    x = _rand(3, 4)
    assert cosine_similarity(x, 2.5 * x) == pytest.approx(1.0)
    assert cosine_similarity(x, -x) == pytest.approx(-1.0)
    assert cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])) == pytest.approx(0.0)
    assert math.isnan(cosine_similarity(x, torch.zeros(3, 4)))
    with pytest.raises(ValueError):
        cosine_similarity(x, _rand(4, 3))


def test_update_magnitude_and_mean_square() -> None:
    m = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert update_magnitude(m) == pytest.approx(5.0)
    assert mean_square(m) == pytest.approx(25.0 / 4)


# ------------------------------------------------------------------ effective gradients vs autograd
def _step_change(delta_w_fn, params: list[torch.Tensor], g: torch.Tensor, lr: float) -> torch.Tensor:
    """ΔW(after one GD step on L = ⟨G, ΔW⟩) − ΔW(before); dL/dW_eff = G exactly for this L."""
    ps = [p.clone().requires_grad_() for p in params]
    before = delta_w_fn(*ps)
    (g * before).sum().backward()
    with torch.no_grad():
        after = delta_w_fn(*[p - lr * p.grad for p in ps])
    return (after - before).detach()


def test_lora_effective_gradient_is_first_order_gd_change() -> None:
    m, n, r, s = 9, 7, 3, 1.7
    a, b, g = _rand(r, n, seed=1), _rand(m, r, seed=2), _rand(m, n, seed=3)
    gt = lora_effective_gradient(g, a, b, s)
    lr = 1e-6
    change = _step_change(lambda a_, b_: s * b_ @ a_, [a, b], g, lr)
    assert torch.allclose(change / -lr, gt, rtol=1e-4, atol=1e-6 * gt.abs().max())
    # SVD form in docs/methods/sds_lora.md#gradient-distortion: s²(G V_A Σ_A² V_Aᵀ + U_B Σ_B² U_Bᵀ G).
    ua, sa, vha = torch.linalg.svd(a, full_matrices=False)
    ub, sb, _ = torch.linalg.svd(b, full_matrices=False)
    svd_form = s**2 * (g @ vha.T @ torch.diag(sa**2) @ vha + ub @ torch.diag(sb**2) @ ub.T @ g)
    assert torch.allclose(gt, svd_form, atol=1e-10)
    # Not the unscaled projection: with skewed factors the two differ.
    assert not torch.allclose(gt, sds_effective_gradient(g, vha.T, ub, s), atol=1e-3)


def test_sds_effective_gradient_is_exact_gd_change() -> None:
    m, n, r, s = 10, 8, 3, 0.9
    a, b, g = _rand(r, n, seed=4), _rand(m, r, seed=5), _rand(m, n, seed=6)
    qa, qb = _orth(n, r, seed=7), _orth(m, r, seed=8)
    lr = 0.3  # ΔW_SDS is linear in (A, B) with Q fixed: the change is exact for any step size
    change = _step_change(lambda a_, b_: s * (qb @ a_ + b_ @ qa.T), [a, b], g, lr)
    assert torch.allclose(change / -lr, sds_effective_gradient(g, qa, qb, s), atol=1e-10)


def test_factor_gradients_match_autograd() -> None:
    m, n, r, s = 6, 5, 2, 2.0
    a, b, g = _rand(r, n, seed=9), _rand(m, r, seed=10), _rand(m, n, seed=11)
    qa, qb = _orth(n, r, seed=12), _orth(m, r, seed=13)
    for fn, ref in (
        (lambda a_, b_: s * b_ @ a_, lora_factor_gradients(g, a, b, s)),
        (lambda a_, b_: s * (qb @ a_ + b_ @ qa.T), sds_factor_gradients(g, qa, qb, s)),
    ):
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        (g * fn(a_, b_)).sum().backward()
        assert torch.allclose(a_.grad, ref[0], atol=1e-12) and torch.allclose(b_.grad, ref[1], atol=1e-12)


def test_full_gradient_from_io_matches_weight_grad() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 4, dtype=F64)
    x = _rand(3, 7, 5, seed=14).requires_grad_()
    out = lin(x)
    out.retain_grad()
    (out * _rand(3, 7, 4, seed=15)).sum().backward()
    g = full_gradient_from_io(x, out.grad)
    assert g.shape == (4, 5)
    assert torch.allclose(g, lin.weight.grad, atol=1e-12)
    with pytest.raises(ValueError):
        full_gradient_from_io(_rand(3, 5), _rand(2, 4))


# ------------------------------------------------------------------ bases and subspaces
def test_orthonormal_basis_spans_input() -> None:
    b = _rand(8, 3, seed=16)
    q = orthonormal_basis(b)
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=F64), atol=1e-12)
    assert torch.allclose(q @ (q.T @ b), b, atol=1e-12)
    a = _rand(3, 9, seed=17)
    qa = orthonormal_basis(a, transpose=True)
    assert qa.shape == (9, 3) and torch.allclose(a @ qa @ qa.T, a, atol=1e-12)


def test_subspace_overlap_values() -> None:
    q = _orth(6, 2, seed=18)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=F64)
    assert subspace_overlap(q @ rot, q) == pytest.approx(1.0)  # same span, rotated basis
    e = torch.eye(4, dtype=F64)
    assert subspace_overlap(e[:, [0, 1]], e[:, [2, 3]]) == pytest.approx(0.0)
    # Half of the subspace shared: a missing /r would give 1.0, a column-wise cosine 0.5 only by accident.
    assert subspace_overlap(e[:, [0, 2]], e[:, [0, 1]]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        subspace_overlap(_orth(5, 2), _orth(6, 2))

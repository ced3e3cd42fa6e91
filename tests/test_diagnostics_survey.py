"""The survey's matrix-factorisation testbeds: Examples 3/4, gauge invariance, Figs. 8 and 10 (small)."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from loralab.diagnostics.claims import check_nystrom, check_optimizers, check_scalar_examples
from loralab.diagnostics.survey_toy import (
    _geometric_mean_s,
    init_factors,
    make_target,
    nystrom_vs_gaussian,
    optimizer_comparison,
    scalar_one_step,
    step,
)


def test_example3_scaledgd_symbolic_and_numeric() -> None:
    out = scalar_one_step("scaledgd")
    eta = out["eta"]
    assert sp.expand(out["product"] - (4 - 6 * eta + sp.Rational(9, 4) * eta**2)) == 0
    for e in (0.01, 0.1, 0.25, 0.5, 0.8):
        assert out["numeric"](e) == pytest.approx(4 - 6 * e + 9 * e * e / 4, abs=1e-13)


def test_example4_reflora_symbolic_and_numeric() -> None:
    out = scalar_one_step("reflora")
    eta = out["eta"]
    assert sp.expand(out["product"] - (2 - 6 * eta) ** 2) == 0
    for e in (0.01, 0.1, 0.2, 1 / 3, 0.6):
        assert out["numeric"](e) == pytest.approx((2 - 6 * e) ** 2, abs=1e-13)
    assert out["zero_loss_eta"] == [sp.Rational(1, 6), sp.Rational(1, 2)]
    assert out["numeric"](1 / 3) == pytest.approx(0.0, abs=1e-14)  # product vanishes at η = 1/3
    # Plain GD gives something else (the examples are not a property of any step).
    assert sp.expand(scalar_one_step("gd")["product"] - (2 - 6 * eta) ** 2) != 0
    assert check_scalar_examples().passed


def test_reflora_s_is_geometric_mean() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    px, py = x.T @ x, y.T @ y
    s = _geometric_mean_s(px, py)
    assert np.allclose(s, s.T) and np.all(np.linalg.eigvalsh(s) > 0)
    assert np.allclose(s @ px @ s, py, atol=1e-10)


def test_gauge_invariance() -> None:
    target = make_target(9, 7, 2, 5.0)
    x, y = init_factors(target, 2, "gaussian", 0.3)
    for algo, invariant in (("scaledgd", True), ("reflora", True), ("gd", False)):
        p1, p2 = (x, y), (3.0 * x, y / 3.0)
        for _ in range(5):
            p1, p2 = step(*p1, target, 0.2, algo), step(*p2, target, 0.2, algo)
        same = np.allclose(p1[0] @ p1[1].T, p2[0] @ p2[1].T, atol=1e-10)
        assert same == invariant, algo


def test_nystrom_init_beats_gaussian() -> None:
    res = nystrom_vs_gaussian(kappas=(2, 8), m=20, n=15, r=3, scales=(0.03, 0.3))
    claim = check_nystrom(res)
    assert claim.passed, claim.numbers
    x0, y0 = init_factors(make_target(20, 15, 3, 4.0), 3, "nystrom", 0.3)
    assert np.all(y0 == 0)
    # Nyström X₀ lies in the target's column space.
    u = np.linalg.svd(make_target(20, 15, 3, 4.0))[0][:, :3]
    assert np.allclose(u @ (u.T @ x0), x0, atol=1e-12)


def test_scaledgd_and_reflora_beat_gd_under_imbalance() -> None:
    res = optimizer_comparison(kappas=(2, 6), m=16, n=12, r=2, max_iter=1500)  # GD may give up: None = lost
    claim = check_optimizers(res)
    assert claim.passed, claim.numbers
    assert res["gd_c4_iters"][-1] is None or res["gd_c4_iters"][-1] > res["gd_c1_iters"][-1]

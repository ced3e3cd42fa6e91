"""Standalone SDS-LoRA testbeds: Theorem 3.2 (κ sweep) and Figure 1 (gradient effective rank)."""
from __future__ import annotations

import numpy as np
import pytest

from loralab.diagnostics.claims import check_gradient_rank, check_kappa
from loralab.diagnostics.sds_toy import gradient_rank_run, kappa_problem, kappa_sweep, sds_split, steps_to_tol


def test_kappa_problem_has_requested_condition_number() -> None:
    p = kappa_problem(m=12, n=10, r=3, kappa=8.0)
    for f in (p.a0, p.b0):
        sv = np.linalg.svd(f, compute_uv=False)
        assert sv[0] / sv[-1] == pytest.approx(8.0)


def test_lora_steps_grow_with_kappa_sds_steps_do_not() -> None:
    res = kappa_sweep(kappas=(1, 4, 16), m=12, n=10, r=3)
    claim = check_kappa(res)
    assert claim.passed, claim.numbers
    lora, sds = res["lora_steps"], res["sds_steps"]
    assert lora[-1] >= 5 * lora[0]
    assert max(sds) <= 2 * min(sds)


def test_fixed_step_lora_needs_far_more_steps_than_sds() -> None:
    """The κ effect is real at a fixed step size too: at κ = 16 LoRA cannot reach tol in the steps SDS needs."""
    p = kappa_problem(m=12, n=10, r=3, kappa=16.0)
    k_sds = steps_to_tol(p, "sds", 0.35)
    assert k_sds is not None
    assert steps_to_tol(p, "lora", 0.7, max_steps=10 * k_sds) is None


def test_sds_split_preserves_the_update() -> None:
    rng = np.random.default_rng(0)
    a, b, s = rng.standard_normal((3, 9)), rng.standard_normal((7, 3)), 2.5
    a2, b2, qa, qb = sds_split(a, b, s)
    assert np.allclose(s * (qb @ a2 + b2 @ qa.T), s * b @ a, atol=1e-12)
    assert np.allclose(qa.T @ qa, np.eye(3)) and np.allclose(qb.T @ qb, np.eye(3))
    # each branch carries half of the update
    assert np.allclose(s * qb @ a2, 0.5 * s * b @ a, atol=1e-12)


def test_gradient_effective_rank_figure1() -> None:
    h = gradient_rank_run(m=24, n=24, r=4, steps=100, warmup=10, every=5, seed=0)
    claim = check_gradient_rank(h)
    assert claim.passed, claim.numbers
    # Before the warm-up ends SDS *is* LoRA (same init, data and optimiser).
    assert h["step"][0] < 10 and h["loss_sds"][0] == h["loss_lora"][0]
    assert np.isnan(h["erank_A_sds"][0])
    assert all(1.0 <= v <= 4.0 + 1e-9 for v in h["erank_A_sds"][3:])

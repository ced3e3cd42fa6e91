"""LoRAM synthetic MLP: Proposition 1 (Fig. 2a) and magnitude dynamics (Fig. 2b), at small sizes."""
from __future__ import annotations

import pytest

from loralab.diagnostics.claims import check_magnitudes, check_proposition1
from loralab.diagnostics.loram_mlp import Reparam, magnitude_dynamics, make_mlp_problem, proposition1, run_lora_mlp


@pytest.fixture(scope="module")
def small_problem():  # noqa: ANN201
    return make_mlp_problem(width=24, depth=5, rank=3, n_samples=64, seed=0)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 2e-3), ("adam", 2e-4)])
def test_proposition1_equivalent_rows_coincide_and_excluded_rows_differ(small_problem, optimizer, lr) -> None:  # noqa: ANN001
    rows = proposition1(small_problem, optimizer, lr, steps=25)
    ref = rows["reference (α'=α)"]["loss"]
    assert ref[-1] < 0.99 * ref[0]  # the trajectory actually moves
    for name, row in rows.items():
        if row["equivalent"]:
            assert row["max_abs_diff"] <= 1e-6, name
        else:
            assert row["max_abs_diff"] > 1e-4, name
    assert check_proposition1({optimizer: rows}).passed


def test_adam_equivalence_needs_negligible_eps(small_problem) -> None:  # noqa: ANN001
    """Prop. 1 for Adam assumes ε ≈ 0: with a large ε the α_A-rescaled row leaves the reference."""
    lr = 2e-4
    ref = Reparam("ref", 16.0, 1.0, 1.0, lr, lr)
    alt = Reparam("alt", 16.0 / 12.0, 3.0, 4.0, 3.0 * lr, 4.0 * lr)
    runs = {eps: [run_lora_mlp(small_problem, rp, "adam", 15, adam_eps=eps)["loss"] for rp in (ref, alt)]
            for eps in (1e-30, 1e-3)}
    diff = {eps: max(abs(x - y) for x, y in zip(*pair)) for eps, pair in runs.items()}
    assert diff[1e-30] <= 1e-9 and diff[1e-3] > 1e-6


def test_magnitude_dynamics_matches_prop2() -> None:
    p = make_mlp_problem(width=64, depth=5, rank=4, n_samples=64, seed=1)  # r/m = 1/16 as in the paper
    res = magnitude_dynamics(p, lr=0.05, steps=30, init_scales=(1.0, 2.0, 4.0))
    claim = check_magnitudes(res)
    assert claim.passed, claim.numbers
    lin_end = res["Linear"]["nu_dW"][-1]
    assert res["LoRA c=1"]["nu_dW"][-1] < 0.25 * lin_end
    assert res["LoRA c=1"]["nu_dW"][-1] < res["LoRA c=2"]["nu_dW"][-1] < res["LoRA c=4"]["nu_dW"][-1]
    assert res["LoRA c=1"]["nu_B"][0] == 0.0 and res["LoRA c=1"]["nu_dW"][0] == 0.0
    assert res["LoRA c=4"]["k1"] == pytest.approx(2 * 16 * 4 / 64)  # k1 = 2c²r/m for square layers

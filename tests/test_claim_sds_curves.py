"""Claim g (SDS-LoRA Figs. 3 and 5 on the embedded task): the checks on synthetic curves, then real runs.

The real-run test trains LoRA and SDS-LoRA through ``loralab.runner`` at ``QUICK_SIZE`` (60 steps, batch 8)
and asserts the alignment (Fig. 3 right) and stable-rank (Fig. 5) claims. The loss claim (Fig. 3 left) is
*not* asserted: it does not hold on this task at the configured learning rates (see claims g2 in
``results/figures/report.md``); the test only checks that it is evaluated and its numbers reported.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from loralab.diagnostics.claims import (
    check_lora_stable_rank,
    check_sds_alignment,
    check_sds_curves,
    check_sds_loss,
)
from loralab.diagnostics.embedded_curves import QUICK_SIZE, embedded_curves, smooth


def method_curves(align: float, loss_end: float, srank: tuple[float, float, float], steps: int = 40,
            warmup: int = 10) -> dict[str, Any]:
    """One method's testbed output with constant alignment, an exponential loss and constant stable ranks."""
    rng = np.random.default_rng(0)
    t = np.arange(1, steps + 1)
    diag = [1, *range(2, steps + 1, 2)]
    return {
        "method": "x", "learning_rate": 1e-3, "scaling": 2.0, "rank": 8, "warmup_steps": warmup, "steps": steps,
        "seconds": 0.0, "step": t.tolist(), "loss": (loss_end + 5 * np.exp(-t / 5)).tolist(), "diag_step": diag,
        "align": (align + 0.01 * rng.standard_normal(len(diag))).tolist(),
        "srank_A": [6.0] + [srank[0]] * (len(diag) - 1), "srank_B": [0.0] + [srank[1]] * (len(diag) - 1),
        "srank_dW": [1.0] + [srank[2]] * (len(diag) - 1), "norm_dW": [0.0] * len(diag),
    }


def synthetic_result() -> dict[str, dict[str, Any]]:
    """A testbed output on which all three checks pass (also used by the figure script's smoke test)."""
    return {"lora": method_curves(0.4, 0.2, (3.5, 2.0, 1.8)), "sds_lora": method_curves(0.6, 0.1, (3.5, 3.5, 4.0))}


def test_smooth_is_a_nan_aware_centred_mean() -> None:
    assert np.allclose(smooth([1.0, 2.0, 3.0, 4.0], 3), [1.5, 2.0, 3.0, 3.5])
    assert np.allclose(smooth([1.0, np.nan, 3.0], 3), [1.0, 2.0, 3.0])
    assert np.allclose(smooth([1.0, 5.0], 1), [1.0, 5.0])


def test_checks_pass_and_fail_on_synthetic_curves() -> None:
    good = synthetic_result()
    assert [c.passed for c in check_sds_curves(good)] == [True, True, True]
    assert [c.key for c in check_sds_curves(good)] == ["g1", "g2", "g3"]

    worse_aligned = {"lora": good["lora"], "sds_lora": method_curves(0.3, 0.1, (3.5, 3.5, 4.0))}
    claim = check_sds_alignment(worse_aligned)
    assert not claim.passed
    assert claim.numbers["mean cos(G, G̃) over the 2nd half, SDS-LoRA"] < claim.numbers[
        "mean cos(G, G̃) over the 2nd half, LoRA"]
    assert check_sds_alignment(good).numbers["fraction of post-warm-up records with SDS > LoRA (smoothed)"] == 1.0

    slower = {"lora": good["lora"], "sds_lora": method_curves(0.6, 0.3, (3.5, 3.5, 4.0))}
    assert not check_sds_loss(slower).passed
    # ends 1 % worse: within the 2 % tolerance on the final loss, but its area under the curve is larger
    tie = {"lora": good["lora"], "sds_lora": method_curves(0.6, 0.202, (3.5, 3.5, 4.0))}
    assert not check_sds_loss(tie).passed
    # faster early (lower area) but ends 10 % worse: fails on the final loss
    early = method_curves(0.6, 0.22, (3.5, 3.5, 4.0))
    early["loss"] = (np.asarray(early["loss"]) - 4 * np.exp(-np.arange(1, 41) / 5)).tolist()
    claim = check_sds_loss({"lora": good["lora"], "sds_lora": early})
    key = "mean loss after SDS's warm-up (area under the curve), "
    assert claim.numbers[key + "SDS-LoRA"] < claim.numbers[key + "LoRA"] and not claim.passed

    isotropic = {"lora": method_curves(0.4, 0.2, (5.9, 7.0, 6.5)), "sds_lora": good["sds_lora"]}
    assert not check_lora_stable_rank(isotropic).passed
    a_not_dropping = {"lora": method_curves(0.4, 0.2, (5.5, 2.0, 1.8)), "sds_lora": good["sds_lora"]}
    assert not check_lora_stable_rank(a_not_dropping).passed


def test_checks_reject_mismatched_runs() -> None:
    res = synthetic_result()
    res["sds_lora"] = method_curves(0.6, 0.1, (3.5, 3.5, 4.0), steps=30)
    with pytest.raises(ValueError, match="different"):
        check_sds_alignment(res)
    with pytest.raises(ValueError, match="different"):
        check_sds_loss(res)


def test_embedded_runs_reproduce_alignment_and_stable_rank(one_compute_thread: None) -> None:
    res = embedded_curves(**QUICK_SIZE)
    lora, sds = res["lora"], res["sds_lora"]
    steps = QUICK_SIZE["steps"]
    for h in (lora, sds):
        assert h["steps"] == steps and h["step"] == list(range(1, steps + 1))
        assert h["diag_step"] == [1, *range(QUICK_SIZE["interval"], steps + 1, QUICK_SIZE["interval"])]
        assert all(0 < a <= 1 for a in h["align"])
    # same seed and data order, and ΔW = 0 before the first update (B = 0): the first losses coincide
    assert lora["loss"][0] == pytest.approx(sds["loss"][0], rel=1e-6)
    assert lora["learning_rate"] == sds["learning_rate"]  # the configs give both the trainer default
    align, loss, srank = check_sds_curves(res)
    assert align.passed, align.numbers
    assert srank.passed, srank.numbers
    # the loss claim (g2) is evaluated and reported, not asserted: see the module docstring
    assert loss.key == "g2" and "final loss (mean of last 6 steps), SDS-LoRA" in loss.numbers

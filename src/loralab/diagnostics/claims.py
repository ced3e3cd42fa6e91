"""Pass/fail criteria for each reproduced claim, shared by the tests and ``scripts/make_figures.py``.

Each ``check_*`` takes the measured output of a testbed function and returns a ``Claim`` whose
``passed`` is the criterion stated in its ``criterion`` field; nothing here hard-codes a measured value.
Claims g1–g3 are in ``claims_embedded`` (re-exported).
"""
from __future__ import annotations

from typing import Any

import numpy as np

# Claims g1–g3 (SDS-LoRA Figs. 3 and 5 on the embedded task) live in their own module; re-exported here.
from loralab.diagnostics.claims_embedded import (
    check_lora_stable_rank,
    comparison_start,
    check_sds_alignment,
    check_sds_curves,
    check_sds_loss,
)
from loralab.diagnostics.rank_tools import (
    captured_energy,
    cumulative_energy,
    greedy_rank_allocation,
    rank_for_energy,
)
from loralab.diagnostics.report import Claim
from loralab.diagnostics.survey_toy import scalar_one_step

__all__ = [
    "check_proposition1",
    "check_magnitudes",
    "check_kappa",
    "check_gradient_rank",
    "check_nystrom",
    "check_optimizers",
    "check_scalar_examples",
    "check_rank_tools",
    "check_sds_alignment",
    "check_sds_loss",
    "comparison_start",
    "check_lora_stable_rank",
    "check_sds_curves",
]

EQUIV_TOL = 1e-6


def check_proposition1(results: dict[str, dict[str, dict[str, Any]]]) -> Claim:
    """``results[optimizer]`` is the output of ``loram_mlp.proposition1``."""
    nums: dict[str, Any] = {}
    ok = True
    for opt, rows in results.items():
        ref = next(iter(rows.values()))["loss"]
        progress = (ref[0] - ref[-1]) / ref[0]
        nums[f"{opt}: reference loss decrease (fraction of L0)"] = progress
        ok &= progress > 0.01  # a flat trajectory would make "equal" vacuous
        for name, row in rows.items():
            nums[f"{opt}: {name} — max |ΔL| ({'equiv.' if row['equivalent'] else 'excluded'})"] = row["max_abs_diff"]
            ok &= row["max_abs_diff"] <= EQUIV_TOL if row["equivalent"] else row["max_abs_diff"] > 100 * EQUIV_TOL
    return Claim(
        "a", "LoRAM Prop. 1 / Fig. 2a",
        "Re-parameterisations with α = α'α_Aα_B and lrs scaled by α_A², α_B² (SGD) or α_A, α_B (Adam, ε→0) give "
        "identical training; other settings (α = 1 with η×4, the other optimiser's rule) do not.",
        f"float64; equivalent rows: max |L_t − L_t^ref| ≤ {EQUIV_TOL:g}; excluded rows: > {100 * EQUIV_TOL:g}; "
        "reference loss drops by > 1 %.",
        bool(ok), nums,
    )


def check_magnitudes(res: dict[str, dict[str, Any]], early: int = 1) -> Claim:
    """``res`` is the output of ``loram_mlp.magnitude_dynamics``."""
    lin = np.asarray(res["Linear"]["nu_dW"])
    lora = {k: v for k, v in res.items() if k != "Linear"}
    nums: dict[str, Any] = {}
    ends = []
    ok = True
    for name, h in lora.items():
        nd = np.asarray(h["nu_dW"])
        ends.append(nd[-1])
        pred_ratio = nd[early] / lin[early]
        nums[f"{name}: ν[ΔW] end / Linear end"] = float(nd[-1] / lin[-1])
        nums[f"{name}: ν[ΔW]/ν[ΔW_lin] at t={early} vs k1"] = f"{pred_ratio:.4g} vs {h['k1']:.4g}"
        drift_a = abs(h["nu_A"][-1] / h["nu_A"][0] - 1)
        nums[f"{name}: relative change of ν[A]"] = float(drift_a)
        ok &= drift_a < 0.05 and 1 / 1.5 <= pred_ratio / h["k1"] <= 1.5
        if h["nu_B"][0] > 0:
            drift_b = abs(h["nu_B"][-1] / h["nu_B"][0] - 1)
            nums[f"{name}: relative change of ν[B]"] = float(drift_b)
            ok &= drift_b < 0.05
        else:
            nums[f"{name}: ν[B] end / ν[A] start"] = float(h["nu_B"][-1] / h["nu_A"][0])
            ok &= h["nu_B"][-1] < 0.05 * h["nu_A"][0]
    first = next(iter(lora.values()))
    basic_ratio = first["nu_dW"][-1] / lin[-1]
    ok &= basic_ratio < 0.25 and all(b > a for a, b in zip(ends, ends[1:]))
    return Claim(
        "b", "LoRAM Fig. 2b / Prop. 2",
        "ν[A], ν[B] barely move; ν[ΔW] of Noise&Zeros LoRA grows far slower than a full-rank layer; larger init "
        "magnitudes grow ν[ΔW] faster (rate k1 = r(mσ_A⁴ + nσ_B⁴) relative to full fine-tuning).",
        "ν[A], ν[B] change < 5 % (B = 0 start: ν[B] stays < 5 % of ν[A]); N&Z ν[ΔW] < 0.25 × Linear at the end; "
        "end ν[ΔW] strictly increasing in the init scale; early ν[ΔW]/ν[ΔW_lin] within ×1.5 of k1.",
        bool(ok), nums,
    )


def check_kappa(res: dict[str, Any], key: str = "c", setting: str = "factorisation") -> Claim:
    """``res`` is the output of ``sds_toy.kappa_sweep``."""
    lora, sds = res["lora_steps"], res["sds_steps"]
    reached = all(k is not None for k in lora + sds)
    ok = reached and res["lora_slope"] >= 0.8 and abs(res["sds_slope"]) <= 0.25
    ok = ok and all(b >= a for a, b in zip(lora, lora[1:])) and max(sds) <= 2 * min(sds)
    nums = {"κ": res["kappa"], "LoRA steps": lora, "SDS steps": sds, "LoRA best lr": res["lora_lr"],
            "SDS best lr": res["sds_lr"], "slope log-steps/log-κ, LoRA": res["lora_slope"],
            "slope log-steps/log-κ, SDS": res["sds_slope"]}
    return Claim(
        key, f"SDS-LoRA Thm. 3.2 ({setting})",
        "LoRA's linear rate degrades with the condition number κ of the factors; SDS-LoRA's does not.",
        "Steps to L ≤ tol·L₀ (best step size per run): LoRA non-decreasing in κ with log-log slope ≥ 0.8; "
        "SDS |slope| ≤ 0.25 and max/min ≤ 2.",
        bool(ok), nums,
    )


def _mean_after(h: dict[str, list[float]], key: str, start: int) -> float:
    return float(np.nanmean(np.asarray(h[key][start:], dtype=float)))


def check_gradient_rank(h: dict[str, list[float]], warmup_records: int = 3) -> Claim:
    """``h`` is the output of ``sds_toy.gradient_rank_run``; means exclude the first records (warm-up)."""
    m = {k: _mean_after(h, k, warmup_records) for k in h if k != "step"}
    ok = all(m[f"erank_{f}_lora"] < m[f"erank_{f}_noscale"] and m[f"erank_{f}_lora"] < m[f"erank_{f}_sds"]
             for f in ("A", "B"))
    nums = {f"mean {k}": v for k, v in m.items() if k.startswith(("erank", "align", "srank", "overlap", "kappa_t"))}
    nums["final loss LoRA / SDS"] = [h["loss_lora"][-1], h["loss_sds"][-1]]
    return Claim(
        "d", "SDS-LoRA Fig. 1 (+ Figs. 3–5 measured alongside)",
        "Anisotropic scaling lowers the effective rank of LoRA's factor gradients; removing the scaling "
        "(B → Q_B) or training with SDS-LoRA gives higher effective rank.",
        "Mean (over training, after warm-up) Roy–Vetterli erank of ∇A and of ∇B: LoRA < LoRA-without-scaling "
        "and LoRA < SDS-LoRA.",
        bool(ok), nums,
        note=f"alignment cos(G, G̃): LoRA {m['align_lora']:.3f} vs SDS {m['align_sds']:.3f} (Fig. 3 direction: "
        f"{'SDS higher' if m['align_sds'] > m['align_lora'] else 'NOT reproduced'}).",
    )


def check_nystrom(res: dict[str, Any]) -> Claim:
    g, ny = res["gd_gaussian_iters"], res["gd_nystrom_iters"]
    ok = all(a is not None and b is not None and b < a for a, b in zip(g, ny))
    nums = {"κ": res["kappa"], "GD iterations, Gaussian init": g, "GD iterations, Nyström init": ny,
            "slope Gaussian": res["gd_gaussian_slope"], "slope Nyström": res["gd_nystrom_slope"],
            "best init scale Gaussian": res["gd_gaussian_scale"], "best init scale Nyström": res["gd_nystrom_scale"]}
    return Claim(
        "e1", "Survey Fig. 8 (Nyström init)",
        "Starting GD in the target's column space (Nyström X₀ = MΦ, Y₀ = 0) converges faster than Gaussian init.",
        "GD iterations to f ≤ 1e-6·f(0) (best step size and init scale each): Nyström < Gaussian at every κ.",
        bool(ok), nums,
        note="The survey's rates (κ⁴ → κ²) are upper bounds; the measured slopes are reported, not tested.",
    )


def check_optimizers(res: dict[str, Any], imbalance: float = 4.0) -> Claim:
    c = f"c{imbalance:g}"
    gd, sgd, ref = res[f"gd_{c}_iters"], res[f"scaledgd_{c}_iters"], res[f"reflora_{c}_iters"]
    ok = all(x is not None for x in sgd + ref)
    ok = ok and all(g is None or (s < g and r < g) for g, s, r in zip(gd, sgd, ref))
    invariant = sgd == res["scaledgd_c1_iters"] and ref == res["reflora_c1_iters"]
    spread = max(sgd) / min(sgd) if ok else float("inf")
    ok = ok and invariant and spread <= 4.0
    nums: dict[str, Any] = {"κ": res["kappa"], "ScaledGD max/min iterations over κ": spread}
    for key in sorted(k for k in res if k.endswith("_iters")):
        nums[key.replace("_iters", " iterations")] = res[key]
    for key in sorted(k for k in res if k.endswith("_slope")):
        nums[key.replace("_slope", " slope")] = res[key]
    return Claim(
        "e2", "Survey Fig. 10 (GD vs ScaledGD vs RefLoRA)",
        "Preconditioned/refactored updates (ScaledGD, RefLoRA) are invariant to the factorisation's scaling and "
        "converge faster than GD; ScaledGD is insensitive to κ.",
        f"Imbalanced init (X×{imbalance:g}, Y÷{imbalance:g}): ScaledGD and RefLoRA need fewer iterations than GD at "
        "every κ; their counts equal those from the balanced init; ScaledGD's count varies ≤ 4× over the κ range.",
        bool(ok), nums,
        note="From the balanced init RefLoRA ≈ GD (the factors are already balanced); its gain is gauge invariance.",
    )


def check_scalar_examples(etas: tuple[float, ...] = (0.05, 0.1, 0.2, 1 / 3, 0.5, 0.9)) -> Claim:
    import sympy as sp

    sg, rf = scalar_one_step("scaledgd"), scalar_one_step("reflora")
    eta = sg["eta"]
    sym_ok = sp.expand(sg["product"] - (4 - 6 * eta + sp.Rational(9, 4) * eta**2)) == 0
    sym_ok &= sp.expand(rf["product"].subs(rf["eta"], eta) - (2 - 6 * eta) ** 2) == 0
    num_err = max(
        max(abs(sg["numeric"](e) - (4 - 6 * e + 9 * e * e / 4)) for e in etas),
        max(abs(rf["numeric"](e) - (2 - 6 * e) ** 2) for e in etas),
    )
    at_third = rf["numeric"](1 / 3)
    nums = {"ScaledGD x⁺y⁺ (sympy)": str(sg["product"]), "RefLoRA x⁺y⁺ (sympy)": str(sp.factor(rf["product"])),
            "max |numeric − closed form| over η grid": num_err,
            "η with f(x⁺, y⁺) = 0, ScaledGD": [str(z) for z in sg["zero_loss_eta"]],
            "η with f(x⁺, y⁺) = 0, RefLoRA": [str(z) for z in rf["zero_loss_eta"]],
            "RefLoRA x⁺y⁺ at η = 1/3": at_third}
    return Claim(
        "e3", "Survey Examples 3 and 4",
        "On f = ½(xy − 1)² from (1, 4): one ScaledGD step gives x⁺y⁺ = 4 − 6η + 9η²/4; one RefLoRA step "
        "gives x⁺y⁺ = (2 − 6η)².",
        "sympy identity of both products, and the numeric step implementations agree to 1e-12 on several η.",
        bool(sym_ok and num_err < 1e-12), nums,
        note="With this f, RefLoRA's new loss is 0 at η ∈ {1/6, 1/2}; at η = 1/3 the *product* (2 − 6η)² is 0 "
        "(x⁺ = y⁺ = 0, the saddle point, loss ½) — not a zero of the loss.",
    )


def check_rank_tools(deltas: dict[str, Any], rank: int, kappa_t: list[float]) -> Claim:
    """Rank diagnostics on full fine-tuning updates ``deltas`` (name → ΔW) and a κ_t history.

    Greedy allocation gets the budget of a uniform rank-``rank`` LoRA on the same layers; with equal per-layer
    costs greedy is optimal for the captured-energy objective, so it must capture at least the uniform energy.
    """
    shapes = {k: tuple(np.asarray(v).shape) for k, v in deltas.items()}
    budget = sum(rank * (d_out + d_in) for d_out, d_in in shapes.values())
    alloc = greedy_rank_allocation(deltas, shapes, budget)
    used = sum(alloc[k] * sum(shapes[k]) for k in alloc)
    uniform = {k: rank for k in deltas}
    e_greedy, e_uniform = captured_energy(deltas, alloc), captured_energy(deltas, uniform)
    total = captured_energy(deltas, {k: min(shapes[k]) for k in deltas})
    nums = {
        f"C({rank}) per layer": [float(cumulative_energy(v)[rank - 1]) for v in deltas.values()],
        "rank for 90 % energy per layer": [rank_for_energy(v, 0.9) for v in deltas.values()],
        "greedy ranks": list(alloc.values()),
        "budget / used parameters": [budget, used],
        "energy fraction kept [greedy, uniform]": [e_greedy / total, e_uniform / total],
        "mean κ_t (LoRA gradient, Fig. 1 testbed)": float(np.nanmean(np.asarray(kappa_t, dtype=float))),
    }
    return Claim(
        "f", "Rank diagnostics (tools)",
        "Cumulative spectral energy C(r), greedy rank allocation under a parameter budget and gradient-subspace "
        "overlap κ_t, applied to measured updates/gradients.",
        "Allocation uses ≤ budget and keeps ≥ the energy of the uniform allocation with the same budget.",
        bool(used <= budget and e_greedy >= e_uniform - 1e-12), nums,
    )

"""Claims g1–g3: SDS-LoRA Figs. 3 and 5 on the embedded task (criteria; re-exported by ``claims``).

``res`` below is the output of ``embedded_curves.sds_curves``: ``{"lora": curves, "sds_lora": curves}``, each
method's seed-0 curves (with diagnostics) at its tuned rate, plus ``seeds`` (every seed's loss curve) and
``tuning`` (the TUNED entry's provenance, or None when the rate was not tuned). Synthetic inputs may lack
``seeds``/``tuning``; the loss claim then needs ``seeds`` and the tuning rows are simply not reported.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from loralab.diagnostics.loss_curves import FINAL_FRAC, final_loss, smooth
from loralab.diagnostics.report import Claim

__all__ = ["check_sds_alignment", "check_sds_loss", "check_lora_stable_rank", "check_sds_curves",
           "paired_test", "comparison_start"]

LABELS = {"lora": "LoRA", "sds_lora": "SDS-LoRA"}
SELECTION = ("each method at its own learning rate from the tune-lr step (the same grid, proxy and rule for both: "
             "lowest held-out loss)")
MIN_SEEDS = 3


def _lrs(res: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{LABELS.get(m, m)}: lr {h['learning_rate']:g} ({h.get('lr_label') or 'unlabelled'}), "
                     f"s {h['scaling']:.3g}" for m, h in res.items())


def comparison_start(res: dict[str, dict[str, Any]]) -> int:
    """First step of the compared window: after the LR warm-up and SDS-LoRA's warm-up, whichever is longer."""
    return 1 + max(max(h.get("lr_warmup_steps", 0), h["warmup_steps"]) for h in res.values())


def _post_warmup(h: dict[str, Any], key: str = "diag_step") -> np.ndarray:
    """Mask of the records after SDS-LoRA's warm-up: before it, SDS *is* plain LoRA (with its own s)."""
    return np.asarray(h[key]) > h["warmup_steps"]


def _second_half(h: dict[str, Any], key: str) -> float:
    steps = np.asarray(h["diag_step"])
    return float(np.nanmean(np.asarray(h[key], dtype=float)[steps > h["steps"] // 2]))


def paired_test(differences: list[float]) -> tuple[float, float]:
    """One-sided paired t-test of H1 "mean difference < 0" over seeds: ``(t, p)`` (NaN for fewer than two)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    if np.allclose(d, d[0]):  # no spread: the t statistic is undefined; report the sign only
        return (-math.inf if d[0] < 0 else math.inf if d[0] > 0 else math.nan), (0.0 if d[0] < 0 else 1.0)
    result = stats.ttest_1samp(d, 0.0, alternative="less")
    return float(result.statistic), float(result.pvalue)


def _tuning_numbers(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    nums: dict[str, Any] = {}
    for m, h in res.items():
        tuned = h.get("tuning")
        if not tuned:
            continue
        budget = tuned["budget"]
        losses = ", ".join(
            f"{x['lr']:g}: {x['heldout_loss'] if isinstance(x['heldout_loss'], str) else round(x['heldout_loss'], 4)}"
            for x in tuned["losses"])
        nums[f"tune-lr, {LABELS.get(m, m)}: held-out loss per lr ({budget['steps']} steps on "
             f"{budget['train_examples']} examples, {budget['heldout_examples']} held out)"] = losses
        nums[f"tune-lr, {LABELS.get(m, m)}: selected lr (TUNED {tuned['date']}, {tuned['commit'][:12]})"] = (
            f"{h['learning_rate']:g}" + (f", still on the {tuned['edge']} edge" if tuned.get("edge") else ""))
    return nums


def check_sds_alignment(res: dict[str, dict[str, Any]], window: int = 5, frac: float = 0.9) -> Claim:
    """Fig. 3 (right): SDS-LoRA's G̃ is better aligned with the full gradient G than LoRA's, throughout."""
    lora, sds = res["lora"], res["sds_lora"]
    if lora["diag_step"] != sds["diag_step"]:
        raise ValueError("LoRA and SDS-LoRA were measured at different steps; run them with the same interval")
    a_l, a_s = smooth(lora["align"], window), smooth(sds["align"], window)
    post = _post_warmup(sds)
    above = float(np.mean(a_s[post] > a_l[post])) if post.any() else 0.0
    m_l, m_s = _second_half(lora, "align"), _second_half(sds, "align")
    nums = {"mean cos(G, G̃) over the 2nd half, LoRA": m_l, "mean cos(G, G̃) over the 2nd half, SDS-LoRA": m_s,
            "fraction of post-warm-up records with SDS > LoRA (smoothed)": above,
            "diagnostic records (steps measured, seed 0)": len(lora["diag_step"]),
            "learning rates / scales": _lrs(res)}
    return Claim(
        "g1", "SDS-LoRA Fig. 3 (alignment), embedded task",
        "The cosine between the full gradient G and the method's low-rank effective gradient G̃ is higher for "
        "SDS-LoRA than for LoRA throughout training.",
        f"Layer-mean cos(G, G̃) (G̃ = s²(GAᵀA + BBᵀG) for LoRA, s²(P_B G + G P_A) for SDS), moving average over "
        f"{window} records of the seed-0 runs: SDS > LoRA at ≥ {frac:.0%} of the records after SDS's warm-up, and "
        f"SDS's mean over the second half of training > LoRA's; {SELECTION} (the protocol is under g2).",
        bool(above >= frac and m_s > m_l), nums,
        note="G̃ is the first-order change of ΔW under a plain gradient step (metrics.py); the runs use AdamW, "
        "whose actual step differs. The paper's exact alignment metric is not known "
        "(docs/methods/diagnostics.md#alignment).",
    )


def check_sds_loss(res: dict[str, dict[str, Any]], alpha: float = 0.05, tol: float = 0.02) -> Claim:
    """Fig. 3 (left): SDS-LoRA's training loss falls faster than LoRA's (and does not end worse).

    "Faster" is the mean loss over the compared window (the area under the curve there): per seed the difference
    SDS − LoRA, then a one-sided paired t-test over the seeds. The window starts after both the LR warm-up and
    SDS-LoRA's own warm-up, so neither warm-up is compared as if it were the method.
    """
    lora, sds = res["lora"], res["sds_lora"]
    if "seeds" not in lora or "seeds" not in sds:
        raise ValueError("the loss claim compares seeds: pass sds_curves' output (with 'seeds')")
    by_seed = {m: {r["seed"]: r for r in res[m]["seeds"]} for m in ("lora", "sds_lora")}
    seeds = sorted(set(by_seed["lora"]) & set(by_seed["sds_lora"]))
    start = comparison_start(res)
    window_means: dict[str, list[float]] = {"lora": [], "sds_lora": []}
    finals: dict[str, list[float]] = {"lora": [], "sds_lora": []}
    below: list[float] = []
    thirds: list[list[float]] = [[], [], []]  # SDS − LoRA per third of the window, per seed (exploratory)
    for seed in seeds:
        runs = {m: by_seed[m][seed] for m in ("lora", "sds_lora")}
        if runs["lora"]["step"] != runs["sds_lora"]["step"]:
            raise ValueError(f"seed {seed}: LoRA and SDS-LoRA losses cover different steps; train both alike")
        mask = np.asarray(runs["lora"]["step"]) >= start
        if not mask.any():
            raise ValueError(f"no step at or after {start}: the runs end inside the warm-ups")
        window = max(3, mask.size // 20)
        curves = {m: np.asarray(r["loss"], dtype=float) for m, r in runs.items()}
        for m in curves:
            window_means[m].append(float(curves[m][mask].mean()))
            finals[m].append(final_loss(curves[m]))
        below.append(float(np.mean(smooth(curves["sds_lora"], window)[mask] < smooth(curves["lora"], window)[mask])))
        gap = (curves["sds_lora"] - curves["lora"])[mask]
        for part, chunk in zip(thirds, np.array_split(gap, 3)):
            part.append(float(chunk.mean()) if chunk.size else math.nan)
    diffs = [a - b for a, b in zip(window_means["sds_lora"], window_means["lora"])]
    t, p = paired_test(diffs)
    n = len(seeds)
    f_l, f_s = (float(np.mean(finals[m])) if finals[m] else math.nan for m in ("lora", "sds_lora"))
    last = sds["steps"]
    nums: dict[str, Any] = {
        "seeds (paired)": seeds,
        "compared window (steps)": f"{start}–{last} "
                                   f"(LR warm-up {max(h.get('lr_warmup_steps', 0) for h in res.values())}"
                                   f" steps, SDS-LoRA warm-up {sds['warmup_steps']} steps)",
        "window mean loss per seed, LoRA": window_means["lora"],
        "window mean loss per seed, SDS-LoRA": window_means["sds_lora"],
        "SDS − LoRA per seed": diffs,
        "mean difference SDS − LoRA (negative: SDS lower)": float(np.mean(diffs)) if diffs else math.nan,
        f"paired t-test, H1 SDS < LoRA: t (df {max(n - 1, 0)}), one-sided p": [t, p],
        "seeds with SDS-LoRA lower over the window": f"{sum(d < 0 for d in diffs)} of {n}",
        "fraction of window steps with SDS < LoRA (moving average over 5 % of the steps), mean over seeds":
            float(np.mean(below)) if below else math.nan,
        f"final loss (mean of the last {FINAL_FRAC:.0%} of steps), mean over seeds, LoRA / SDS-LoRA": [f_l, f_s],
        "SDS − LoRA per third of the window, mean over seeds (exploratory, not the criterion)":
            [float(np.mean(t)) if t else math.nan for t in thirds],
        "seeds with SDS-LoRA lower, per third of the window (exploratory)":
            " / ".join(f"{sum(d < 0 for d in t)} of {len(t)}" for t in thirds),
        "learning rates / scales": _lrs(res),
    }
    nums.update(_tuning_numbers(res))
    passed = n >= MIN_SEEDS and math.isfinite(p) and p < alpha and float(np.mean(diffs)) < 0 and f_s <= f_l * (1 + tol)
    untuned = [LABELS.get(m, m) for m, h in res.items() if h.get("lr_label") != "TUNED"]
    return Claim(
        "g2", "SDS-LoRA Fig. 3 (loss), embedded task",
        "SDS-LoRA's training loss converges faster than LoRA's.",
        f"Protocol: {SELECTION}; an LR warm-up longer than SDS-LoRA's warm-up; per seed, the mean per-step training "
        f"loss over the window after both warm-ups (steps ≥ {start}); SDS-LoRA passes when its window mean is "
        f"lower than LoRA's by a one-sided paired t-test over ≥ {MIN_SEEDS} seeds at p < {alpha:g}, and its final "
        f"loss (mean of the last {FINAL_FRAC:.0%} of steps, averaged over seeds) is ≤ LoRA's × {1 + tol:g}. "
        "Methods keep their default configs (SDS: s = α/√r).",
        bool(passed), nums,
        note=("The rates of " + " and ".join(untuned) + " are not TUNED here (the run used the rate the config "
              "composes), so this is not the stated protocol. " if untuned else "")
        + "Before this protocol the loss claim averaged from SDS-LoRA's warm-up on, with no LR warm-up, one seed and "
        "selection by final training loss: that compared SDS-LoRA's 10 warm-up steps at its lower rate as if they "
        "were the method.",
    )


def check_lora_stable_rank(res: dict[str, dict[str, Any]], drop: float = 0.8) -> Claim:
    """Fig. 5: LoRA's factors develop skewed spectra (stable rank well below r). SDS is reported only."""
    lora, sds = res["lora"], res["sds_lora"]
    r = lora["rank"]
    m = {k: _second_half(lora, k) for k in ("srank_A", "srank_B", "srank_dW")}
    a0 = float(lora["srank_A"][0])  # step 1: A is (almost) its random init, B ≈ 0
    nums: dict[str, Any] = {"rank r": r, "LoRA stable rank of A at step 1": a0}
    names = {"srank_A": "A", "srank_B": "B", "srank_dW": "ΔW"}
    nums.update({f"LoRA stable rank of {names[k]} (2nd-half mean)": v for k, v in m.items()})
    nums.update({f"SDS-LoRA stable rank of {n} (2nd-half mean)": _second_half(sds, k) for k, n in names.items()})
    nums["learning rates / scales"] = _lrs(res)
    ok = m["srank_B"] <= r / 2 and m["srank_dW"] <= r / 2 and m["srank_A"] <= drop * a0
    return Claim(
        "g3", "SDS-LoRA Fig. 5 (stable rank), embedded task",
        "LoRA's matrices develop skewed singular spectra (stable rank ‖M‖_F²/‖M‖_2² well below r) during "
        "training — the precondition for anisotropic gradient scaling to matter.",
        f"LoRA, layer-mean stable rank over the second half of training (seed 0): B and ΔW ≤ r/2, and A ≤ {drop:g} "
        f"× its value at step 1 (A starts as a random, nearly isotropic matrix; B starts at 0); {SELECTION}.",
        bool(ok), nums,
        note="SDS-LoRA's stable ranks are listed for comparison only (its ΔW = s(Q_B A + B Q_Aᵀ) has rank ≤ 2r, "
        "and its gradients do not depend on the factors' spectra); the paper's Fig. 5 makes no claim about them.",
    )


def check_sds_curves(res: dict[str, dict[str, Any]]) -> list[Claim]:
    """All three claims of SDS-LoRA Figs. 3 and 5 on the embedded task (alignment, loss, stable rank)."""
    return [check_sds_alignment(res), check_sds_loss(res), check_lora_stable_rank(res)]

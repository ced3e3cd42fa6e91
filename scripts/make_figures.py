#!/usr/bin/env python
"""CPU reproductions of the mechanism claims of LoRAM and SDS-LoRA (and the LoRA survey's testbeds).

Writes PNGs and ``report.md`` (pass/fail per claim with the measured numbers) to ``--out``
(default ``results/figures``). ``--quick`` uses small sizes (a smoke run, seconds); the default uses the
papers' sizes where known (LoRAM MLP: width 400, rank 25) and, for SDS-LoRA Figs. 3 and 5, the embedded
task's 300-step recipe (experiment sds_curves): LoRA and SDS-LoRA each at its tune-lr rate (tuned once and
cached in conf/tuned_lr/sds_curves/), at five seeds, compared after both warm-ups by a paired test.
Exit status 1 when any claim fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from loralab.diagnostics import claims as C  # noqa: E402
from loralab.figures.embedded_curves import FULL_SIZE, QUICK_SIZE, sds_curves, smooth  # noqa: E402
from loralab.diagnostics.loram_mlp import magnitude_dynamics, make_mlp_problem, proposition1  # noqa: E402
from loralab.diagnostics.rank_tools import cumulative_energy  # noqa: E402
from loralab.diagnostics.report import Claim, write_report  # noqa: E402
from loralab.diagnostics.sds_toy import gradient_rank_run, kappa_sweep  # noqa: E402
from loralab.diagnostics.survey_toy import (  # noqa: E402
    convergence_curve,
    init_factors,
    make_target,
    nystrom_vs_gaussian,
    optimizer_comparison,
    scalar_one_step,
)

FULL = dict(width=400, rank=25, samples=256, p1_steps=100, mag_steps=200, kappas=(1, 2, 4, 8, 16, 32),
            meas=1500, fig1=dict(), survey=dict(), ny=dict(kappas=(2, 5, 10, 20, 50)),
            oc=dict(kappas=(2, 5, 10, 20)), curves=FULL_SIZE)
QUICK = dict(width=64, rank=4, samples=64, p1_steps=30, mag_steps=40, kappas=(1, 4, 16), meas=None,
             fig1=dict(m=24, n=24, r=4, steps=100), survey=dict(m=16, n=12, r=2),
             ny=dict(kappas=(2, 8), scales=(0.03, 0.3), lrs=(1.0, 0.7, 0.5, 0.25)),
             oc=dict(kappas=(2, 6), max_iter=1500, lrs=(1.0, 0.7, 0.5, 0.25, 0.1)), curves=QUICK_SIZE)


def _plain_log_ticks(ax: plt.Axes) -> None:
    """Log axes over less than a decade get overlapping minor labels: keep only the major ones."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def part_a(cfg: dict, out: Path) -> Claim:
    p = make_mlp_problem(width=cfg["width"], rank=cfg["rank"], n_samples=cfg["samples"])
    res = {"sgd": proposition1(p, "sgd", 2e-3, steps=cfg["p1_steps"]),
           "adam": proposition1(p, "adam", 5e-5, steps=cfg["p1_steps"])}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (opt, rows) in zip(axes, res.items()):
        for name, row in rows.items():
            ax.plot(row["loss"], ls="-" if row["equivalent"] else "--", lw=2.5 if name.startswith("ref") else 1.2,
                    label=name)
        ax.set(title=f"{opt.upper()} (α = 16)", xlabel="step", ylabel="MSE loss")
        ax.legend(fontsize=7)
    claim = C.check_proposition1(res)
    claim.figures.append(_save(fig, out, "loram_fig2a_prop1.png"))
    return claim


def part_b(cfg: dict, out: Path) -> tuple[Claim, dict]:
    p = make_mlp_problem(width=cfg["width"], rank=cfg["rank"], n_samples=cfg["samples"])
    res = magnitude_dynamics(p, lr=0.05, steps=cfg["mag_steps"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, h in res.items():
        for ax, key in zip(axes, ("nu_A", "nu_B", "nu_dW")):
            if key in h:
                ax.plot(h[key], label=f"{name} (k1={h['k1']:.3g})")
    for ax, title in zip(axes, ("ν[A]", "ν[B]", "ν[ΔW]")):
        ax.set(title=title, xlabel="step (SGD)")
        ax.set_yscale("symlog", linthresh=1e-12)
        ax.legend(fontsize=7)
    claim = C.check_magnitudes(res)
    claim.figures.append(_save(fig, out, "loram_fig2b_magnitudes.png"))
    return claim, res


def part_c(cfg: dict, out: Path) -> list[Claim]:
    runs = {"factorisation": kappa_sweep(cfg["kappas"], **cfg["survey"])}
    if cfg["meas"]:
        runs["Gaussian sensing"] = kappa_sweep(cfg["kappas"][:-1], measurements=cfg["meas"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    result = []
    for (setting, res), key, ls in zip(runs.items(), ("c", "c2"), ("-", ":")):
        for meth in ("lora", "sds"):
            ax.loglog(res["kappa"], [k or np.nan for k in res[f"{meth}_steps"]], ls, marker="o",
                      label=f"{meth.upper()} {setting} (slope {res[f'{meth}_slope']:.2f})")
        result.append(C.check_kappa(res, key, setting))
    ax.set(xlabel="κ of initial factors", ylabel="GD steps to L ≤ 1e-4·L₀ (best step size)")
    _plain_log_ticks(ax)
    ax.legend(fontsize=7)
    name = _save(fig, out, "sds_thm32_kappa.png")
    for c in result:
        c.figures.append(name)
    return result


def part_d(cfg: dict, out: Path) -> tuple[Claim, dict]:
    h = gradient_rank_run(**cfg["fig1"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, f in zip(axes, ("A", "B")):
        for key, label in (("lora", "LoRA"), ("noscale", "LoRA w/o scaling (Q_B / Q_A)"), ("sds", "SDS-LoRA")):
            ax.plot(h["step"], h[f"erank_{f}_{key}"], label=label)
        ax.set(title=f"effective rank of ∇{f}", xlabel="step")
        ax.legend(fontsize=8)
    claim = C.check_gradient_rank(h)
    claim.figures.append(_save(fig, out, "sds_fig1_erank.png"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    axes[0].plot(h["step"], h["loss_lora"], label="LoRA")
    axes[0].plot(h["step"], h["loss_sds"], label="SDS-LoRA")
    axes[0].set(title="population loss", yscale="log")
    axes[1].plot(h["step"], h["align_lora"], label="LoRA")
    axes[1].plot(h["step"], h["align_sds"], label="SDS-LoRA")
    axes[1].set(title="cos(G, G̃) (Fig. 3)")
    axes[2].plot(h["step"], h["overlap_QA_sds"], label="Q_A")
    axes[2].plot(h["step"], h["overlap_QB_sds"], label="Q_B")
    axes[2].set(title="SDS basis overlap between records (Fig. 4)")
    axes[3].plot(h["step"], h["srank_A_lora"], label="A")
    axes[3].plot(h["step"], h["srank_B_lora"], label="B")
    axes[3].set(title="stable rank of LoRA factors (Fig. 5)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    claim.figures.append(_save(fig, out, "sds_fig3_5_mechanisms.png"))
    return claim, h


def part_e(cfg: dict, out: Path) -> list[Claim]:
    ny = nystrom_vs_gaussian(**cfg["ny"], **cfg["survey"])
    oc = optimizer_comparison(**cfg["oc"], **cfg["survey"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for label in ("gd_gaussian", "gd_nystrom"):
        axes[0].loglog(ny["kappa"], ny[f"{label}_iters"], marker="o", label=label)
    axes[0].set(title="Fig. 8: GD iterations to 1e-6", xlabel="κ")
    target = make_target(40, 30, 4, 10.0)
    for kind, scale in (("gaussian", 0.03), ("nystrom", 0.3)):
        x0, y0 = init_factors(target, 4, kind, scale)
        axes[1].semilogy(convergence_curve(target, x0, y0, 0.5, "gd", 300), label=f"GD, {kind}")
    axes[1].set(title="κ = 10, η = 0.5", xlabel="iteration", ylabel="f / f(0)")
    for key in sorted(k for k in oc if k.endswith("_iters")):
        axes[2].loglog(oc["kappa"], [k or np.nan for k in oc[key]], marker="o", ls="-" if "c1" in key else "--",
                       label=key.replace("_iters", ""))
    axes[2].set(title="Fig. 10: iterations to 1e-6 (c = X/Y imbalance)", xlabel="κ")
    for ax in axes:
        ax.legend(fontsize=7)
    _plain_log_ticks(axes[0])
    _plain_log_ticks(axes[2])
    name = _save(fig, out, "survey_fig8_fig10.png")
    c8, c10 = C.check_nystrom(ny), C.check_optimizers(oc)
    c8.figures.append(name)
    c10.figures.append(name)
    ex = C.check_scalar_examples()
    etas = np.linspace(0, 0.7, 141)
    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in ("gd", "scaledgd", "reflora"):
        num = scalar_one_step(algo)["numeric"]
        ax.plot(etas, [0.5 * (num(e) - 1) ** 2 for e in etas], label=algo)
    ax.set(title="f(x⁺, y⁺) after one step from (1, 4)", xlabel="η", ylim=(0, 6))
    ax.legend()
    ex.figures.append(_save(fig, out, "survey_examples_3_4.png"))
    return [c8, c10, ex]


def part_f(mag: dict, fig1: dict, rank: int, out: Path) -> Claim:
    deltas = {f"layer{i}": d for i, d in enumerate(mag["Linear"]["deltas"])}
    claim = C.check_rank_tools(deltas, rank, fig1["kappa_t_lora"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in deltas.items():
        axes[0].plot(np.arange(1, min(d.shape) + 1), cumulative_energy(d).numpy(), label=name)
    axes[0].axvline(rank, color="k", ls=":")
    axes[0].set(title="C(r) of full fine-tuning updates (Fig. 2b 'Linear')", xlabel="r", xscale="log")
    axes[0].legend(fontsize=7)
    axes[1].plot(fig1["step"], fig1["kappa_t_lora"])
    axes[1].set(title="κ_t of LoRA's full gradient (Fig. 1 testbed)", xlabel="step", ylim=(0, 1.05))
    claim.figures.append(_save(fig, out, "rank_tools.png"))
    return claim


def part_g(cfg: dict, out: Path) -> list[Claim]:
    """SDS-LoRA Figs. 3 and 5 on the embedded task (experiment sds_curves, trained by loralab's runner), each
    method at its tune-lr rate, at several seeds (``embedded_curves`` docstring)."""
    res = sds_curves(**cfg["curves"])
    lora, sds = res["lora"], res["sds_lora"]
    names = {"lora": "LoRA", "sds_lora": "SDS-LoRA"}
    labels = {m: f"{names[m]} (lr {h['learning_rate']:g}, {h.get('lr_label') or 'unlabelled'})" for m, h in res.items()}
    win = max(3, lora["steps"] // 20)
    start = C.comparison_start(res)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for m, h in res.items():
        curves = np.asarray([smooth(r["loss"], win) for r in h["seeds"]])
        line, = axes[0].plot(h["step"], curves.mean(axis=0), label=f"{labels[m]}, mean of {len(curves)} seeds")
        axes[0].fill_between(h["step"], curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
        axes[1].plot(h["diag_step"], smooth(h["align"], 5), color=line.get_color(), label=labels[m])
        tuned = h.get("tuning")
        if tuned:  # the tune-lr grid: held-out loss of every proxy run, the selected one ringed
            points = [(x["lr"], x["heldout_loss"]) for x in tuned["losses"] if not isinstance(x["heldout_loss"], str)]
            axes[2].loglog(*zip(*points), "o-", color=line.get_color(), label=names[m])
            axes[2].loglog([h["learning_rate"]], [dict(points)[h["learning_rate"]]], "o", ms=12, mfc="none",
                           color=line.get_color())
    axes[0].set(title=f"training loss (moving average over {win} steps; band: seed min–max)", yscale="log")
    axes[1].set(title="layer-mean cos(G, G̃), seed 0 (moving average over 5 records)")
    for ax in axes[:2]:
        ax.axvline(sds["warmup_steps"], color="k", ls=":", lw=0.8)  # SDS's warm-up (plain LoRA) ends here
        ax.axvline(start, color="k", ls="--", lw=0.8)                 # the compared window starts here
        ax.set_xlabel("step")
    if lora.get("tuning"):
        budget = lora["tuning"]["budget"]
        axes[2].set(title=f"tune-lr: held-out loss ({budget['steps']} steps, {budget['heldout_examples']} held out)",
                    xlabel="learning rate")
    for ax in axes:
        ax.legend(fontsize=8)
    fig3 = _save(fig, out, "sds_fig3_embedded.png")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, name) in zip(axes, (("srank_A", "A"), ("srank_B", "B"), ("srank_dW", "ΔW"))):
        for m, h in res.items():
            ax.plot(h["diag_step"], h[key], label=labels[m])
        ax.axhline(lora["rank"], color="k", ls=":", lw=0.8, label="r")
        ax.set(title=f"stable rank of {name} (layer mean, seed 0)", xlabel="step", ylim=(0, None))
        ax.legend(fontsize=8)
    fig5 = _save(fig, out, "sds_fig5_embedded.png")
    claims = C.check_sds_curves(res)
    for c in claims:
        c.figures.append(fig5 if c.key == "g3" else fig3)
        c.numbers["training time LoRA / SDS-LoRA (s), all seeds"] = [sum(r["seconds"] for r in h["seeds"])
                                                                    for h in (lora, sds)]
    return claims


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/figures", type=Path)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    # One intra-op thread by default: the matrices are small, and on a shared machine extra OpenMP threads
    # spin against other processes (a 2-thread run was several times slower than 1 thread under load).
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    claims: list[Claim] = []
    timings: dict[str, float] = {}
    t0 = time.time()
    claims.append(part_a(cfg, args.out))
    timings["a"] = time.time() - t0
    claim_b, mag = part_b(cfg, args.out)
    claims.append(claim_b)
    timings["b"] = time.time() - t0 - sum(timings.values())
    claims += part_c(cfg, args.out)
    timings["c"] = time.time() - t0 - sum(timings.values())
    claim_d, fig1 = part_d(cfg, args.out)
    claims.append(claim_d)
    claims += part_e(cfg, args.out)
    timings["d+e"] = time.time() - t0 - sum(timings.values())
    claims.append(part_f(mag, fig1, cfg["rank"], args.out))
    timings["f"] = time.time() - t0 - sum(timings.values())
    claims += part_g(cfg, args.out)
    timings["g"] = time.time() - t0 - sum(timings.values())
    preamble = (
        f"Generated by `scripts/make_figures.py{' --quick' if args.quick else ''}` in {time.time() - t0:.0f} s "
        f"(per part: {', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}). Definitions: "
        "`src/loralab/diagnostics/metrics.py`; testbeds: `loram_mlp.py`, `sds_toy.py`, `survey_toy.py`, "
        "`src/loralab/figures/embedded_curves.py` (claims g: real training runs of the embedded task through "
        "`loralab.runner`, "
        "experiment `sds_curves`; protocol under g2); "
        "criteria: `claims.py`."
    )
    path = write_report(claims, args.out / "report.md", preamble=preamble)
    for c in claims:
        print(f"[{'PASS' if c.passed else 'FAIL'}] {c.key} {c.source}")
    print(f"report: {path}")
    return 0 if all(c.passed for c in claims) else 1


if __name__ == "__main__":
    sys.exit(main())

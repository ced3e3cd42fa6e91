"""SDS-LoRA Figs. 3 and 5 on the embedded task: LoRA and SDS-LoRA trained by loralab's own runner in the
``sds_curves`` experiment, each at its own TUNED learning rate, at several seeds.

Protocol (``conf/experiment/sds_curves.yaml``; ``make figures``, claims g1–g3 in ``claims_embedded``):

1. *Learning rates* come from the tune-lr step (:mod:`loralab.tuning`), the same for both methods: the grid
   {1e-3, 3e-3, 1e-2}, extended past an edge up to twice, each point a proxy run of the recipe below on 1,800 of
   the 2,000 training problems, scored by the loss on the other 200 (never trained on); the lowest held-out
   loss wins. The choice is a TUNED config entry (``conf/tuned_lr/sds_curves/``) with its grid, losses, date and
   commit. ``ensure_tuned`` re-tunes only a method whose entry is missing or was tuned under another
   declaration, so the selection is cached between ``make figures`` runs.
2. *Recipe*: the embedded default (tiny_lm, arith_shift, rank 8, 300 steps at batch 32, linear decay), each
   method with its default config (LoRA s = 2, SDS-LoRA s = α/√r ≈ 5.66 and 10 plain-LoRA steps before its
   reparameterisation), and an LR warm-up of 30 steps: longer than SDS-LoRA's warm-up, so neither method's
   warm-up falls in the compared window and SDS-LoRA's switch lands early in the ramp.
3. *Runs*: each method at every seed of ``SEEDS`` (adapter initialisation and data order; the pretrained base
   is the same). Seed 0 also measures the diagnostics — cos(G, G̃) averaged over the adapted layers
   (``align``), stable ranks of A, B and ΔW (``srank_*``) — every ``interval`` steps on all 28 adapted layers;
   measuring does not change training, so its loss curve is the seed's.
4. *Comparison*: the loss claim compares the methods on the steps after both warm-ups, paired by seed
   (``claims_embedded.check_sds_loss``).

``sds_curves`` returns ``{method: curves}``: the seed-0 run's curves (loss, diagnostics, lr and its label, scale,
warm-ups) plus ``seeds`` (every seed's loss curve) and ``tuning`` (the TUNED entry's provenance).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loralab.diagnostics.loss_curves import FINAL_FRAC, final_loss, smooth
from loralab.tuning.selection import extend_lr, select_lr

__all__ = ["METHODS", "EXPERIMENT", "SEEDS", "CURVE_KEYS", "FINAL_FRAC", "FULL_SIZE", "QUICK_SIZE",
           "sds_curves", "train_run", "ensure_tuned", "final_loss", "select_lr", "extend_lr", "smooth"]

METHODS = ("lora", "sds_lora")
EXPERIMENT = "sds_curves"
SEEDS = (0, 1, 2, 3, 4)
# FULL_SIZE: the experiment's own recipe (300 steps, batch 32), five seeds, diagnostics every 5 steps on seed 0;
# rates tuned (or read from the cached TUNED entries). QUICK_SIZE: a smoke size for tests and
# ``make_figures.py --quick``: 40 steps at batch 4, three seeds, the rates the config composes (no tuning).
FULL_SIZE: dict[str, Any] = {"seeds": SEEDS, "interval": 5, "tune": True}
QUICK_SIZE: dict[str, Any] = {"seeds": (0, 1, 2), "interval": 2, "tune": False,
                              "overrides": ("trainer.max_steps=40", "trainer.save_steps=40", "trainer.warmup_steps=12",
                                            "trainer.per_device_train_batch_size=4")}
CURVE_KEYS = ("align", "srank_A", "srank_B", "srank_dW", "norm_dW")
# More than the embedded model's 28 adapted matrices (4 blocks × 7 projections): every layer is measured.
ALL_LAYERS = 10_000


def _read_steps(path: Path) -> tuple[dict[int, float], dict[int, dict[str, float]]]:
    """Per-step loss and diagnostics records from a ``steps.jsonl`` (the last line per step wins)."""
    loss: dict[int, float] = {}
    diag: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            loss[int(rec["step"])] = float(rec["loss"])
        if "diag/align" in rec:
            diag[int(rec["step"])] = {k.removeprefix("diag/"): float(v) for k, v in rec.items()
                                      if k.startswith("diag/")}
    return loss, diag


def train_run(method: str, seed: int, results_dir: Path, interval: int = 0, max_layers: int = ALL_LAYERS,
              overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One run of ``method`` at ``seed`` in the sds_curves experiment, through ``loralab.runner.run``; its curves.

    ``interval`` 0 turns diagnostics off (loss only). Always re-trained (``force_rerun``), never read from a
    stale run directory.
    """
    # Imported here: importing the diagnostics package must not pull in transformers/hydra.
    from loralab.instantiate import build
    from loralab.lr_source import labelled_lr
    from loralab.rundir import RunDir
    from loralab.runner import run
    from loralab.tables.grid import compose

    diag = [f"diagnostics.interval={interval}", f"diagnostics.max_layers={max_layers}"] if interval else []
    cfg = compose([
        f"experiment={EXPERIMENT}", f"method={method}", f"seed={seed}",
        f"diagnostics.enabled={'true' if interval else 'false'}", *diag,
        "progress=false", "force_rerun=true", f"paths.results_dir={results_dir}", *overrides,
    ])
    started = time.time()
    # The Trainer prints every logged step (here: every step) to stdout; the curves come from steps.jsonl.
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = run(cfg)
    seconds = time.time() - started
    loss, diag_rec = _read_steps(RunDir.for_config(cfg).path / "steps.jsonl")
    diag_steps = sorted(diag_rec)
    labelled = labelled_lr(cfg)
    built = build(cfg.method, _convert_="all")
    out: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "learning_rate": float(cfg.trainer.learning_rate),
        "lr_label": labelled.label,
        "batch": int(cfg.trainer.per_device_train_batch_size),
        "scaling": float(built.scaling),
        "rank": int(cfg.rank),
        # plain-LoRA steps before the method's own update (SDS-LoRA: before the SVD); 0 for the others
        "warmup_steps": int(getattr(built, built.warmup_option)) if built.warmup_option else 0,
        "lr_warmup_steps": int(cfg.trainer.warmup_steps),
        "steps": int(metrics["train"]["steps"]),
        "seconds": seconds,
        "step": sorted(loss),
        "loss": [loss[s] for s in sorted(loss)],
        "diag_step": diag_steps,
    }
    for key in CURVE_KEYS:
        out[key] = [diag_rec[s].get(key, math.nan) for s in diag_steps]
    return out


def _tuning_of(cfg: Any) -> dict[str, Any] | None:
    """The TUNED entry's provenance at the config's rank (None when its rate is not TUNED)."""
    from omegaconf import OmegaConf

    from loralab.lr_source import labelled_lr

    if labelled_lr(cfg).label != "TUNED":
        return None
    tuned = OmegaConf.to_container(cfg.lr_source.tuned, resolve=True)
    rank = str(cfg.rank)
    if not isinstance(tuned, dict) or rank not in (tuned.get("lr_by_rank") or {}):
        return None  # not tuned at this rank (or an entry in another format): tune it
    return {**{k: v for k, v in tuned.items() if k not in ("lr_by_rank", "losses", "edge", "replaced")},
            "rank": int(cfg.rank), "losses": tuned["losses"][rank], "edge": tuned["edge"][rank],
            "replaced": tuned["replaced"][rank]}


def ensure_tuned(methods: Sequence[str] = METHODS, extra: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Each method's TUNED provenance in the sds_curves experiment, tuning (and writing the entry) only where the
    entry is missing or was tuned under another ``tune_lr`` declaration (grid, extension, proxy budget)."""
    from loralab.provenance import git_state
    from loralab.tables.grid import CONF_DIR, compose
    from loralab.tuning.registry import write_entry
    from loralab.tuning.tune import tune_cell, tune_cells

    commit = git_state()  # the code that runs the proxies
    spec, cells = tune_cells(EXPERIMENT, extra)
    out: dict[str, dict[str, Any]] = {}
    for cell in (c for c in cells if c.method in methods):
        cfg = compose([*cell.job, *extra])
        tuned = _tuning_of(cfg)
        current = tuned is not None and (tuned.get("grid"), tuned.get("extend"), tuned.get("budget")) == (
            list(spec.grid), spec.extend, spec.budget())
        if not current:
            write_entry([tune_cell(cell, spec, extra)], CONF_DIR / "tuned_lr", EXPERIMENT, {cell.rank: cfg},
                        commit=commit)
            cfg = compose([*cell.job, *extra])
            tuned = _tuning_of(cfg)
        assert tuned is not None
        out[cell.method] = {**tuned, "lr": float(cfg.trainer.learning_rate)}
    return out


def sds_curves(seeds: Sequence[int] = SEEDS, interval: int = 5, max_layers: int = ALL_LAYERS,
               overrides: Sequence[str] = (), results_dir: str | Path | None = None,
               methods: Sequence[str] = METHODS, tune: bool = True) -> dict[str, dict[str, Any]]:
    """LoRA and SDS-LoRA on the embedded task at their tuned rates and at every seed (module docstring).

    ``tune`` False skips the tune-lr step and runs at whatever rate the experiment composes (the cached TUNED
    entries when present). ``results_dir`` keeps the run directories (default: a temporary directory).
    """
    tuning = ensure_tuned(methods) if tune else {}

    def go(tmp: Path) -> dict[str, dict[str, Any]]:
        res: dict[str, dict[str, Any]] = {}
        for m in methods:
            runs = [train_run(m, s, tmp, interval if n == 0 else 0, max_layers, overrides)
                    for n, s in enumerate(seeds)]
            res[m] = {**runs[0], "seeds": [{k: r[k] for k in ("seed", "step", "loss", "seconds")} for r in runs],
                      "tuning": tuning.get(m)}
        return res

    if results_dir is not None:
        return go(Path(results_dir))
    with tempfile.TemporaryDirectory(prefix="loralab-curves-") as tmp:
        return go(Path(tmp))

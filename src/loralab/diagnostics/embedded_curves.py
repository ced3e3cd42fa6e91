"""SDS-LoRA Figs. 3 and 5 on the embedded task: LoRA and SDS-LoRA trained by loralab's own runner.

``embedded_curves`` runs ``loralab.runner.run`` once per method on the embedded default (``model=tiny_lm``,
``dataset=arith_shift``, rank 8) with the same seed, data order and step budget, ``diagnostics.enabled=true``
and the loss logged every step, and reads the curves back from each run's ``steps.jsonl``:

* ``loss`` — the Trainer's training loss of every optimiser step (the mini-batch mean);
* ``align`` — cos(G, G̃) averaged over the adapted layers (``DiagnosticsCallback``, ``metrics.py``);
* ``srank_A``, ``srank_B``, ``srank_dW`` — stable ranks of the factors and of ΔW, averaged over layers.

Nothing is tuned here: each method trains with the learning rate the composed config gives it (the trainer
default unless ``conf/method_dataset/<method>_arith_shift.yaml`` sets one), and the value used is returned.
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

import numpy as np

__all__ = ["METHODS", "CURVE_KEYS", "FULL_SIZE", "QUICK_SIZE", "embedded_curves", "train_with_diagnostics", "smooth"]

METHODS = ("lora", "sds_lora")
# The embedded default (``python run.py``: 300 steps, batch 32), measured every 5 steps (~5 min for both on
# 2 cores), and a smoke size for tests / ``make_figures.py --quick`` (~20 s): same task and learning rates,
# batch 8 so that a step costs a quarter.
FULL_SIZE: dict[str, Any] = {"steps": 300, "interval": 5}
QUICK_SIZE: dict[str, Any] = {"steps": 60, "interval": 2, "overrides": ("trainer.per_device_train_batch_size=8",)}
CURVE_KEYS = ("align", "srank_A", "srank_B", "srank_dW", "norm_dW")
# More than the embedded model's 28 adapted matrices (4 blocks × 7 projections): every layer is measured.
ALL_LAYERS = 10_000


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, NaN-aware, shrinking at the ends (no padding bias)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or x.size == 0:
        return x.copy()
    good = ~np.isnan(x)
    kernel = np.ones(int(window))
    total = np.convolve(np.where(good, x, 0.0), kernel, mode="same")
    count = np.convolve(good.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


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


def train_with_diagnostics(method: str, steps: int, interval: int, results_dir: Path,
                           max_layers: int = ALL_LAYERS, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One run of ``method`` on the embedded task through ``loralab.runner.run``; returns its curves."""
    # Imported here: importing the diagnostics package must not pull in transformers/hydra.
    from loralab.instantiate import build
    from loralab.rundir import RunDir
    from loralab.runner import run
    from loralab.tables.grid import compose

    cfg = compose([
        f"method={method}", f"trainer.max_steps={steps}",
        "trainer.logging_steps=1",  # the loss of every step, not 10-step means
        f"trainer.save_steps={steps}",  # one checkpoint at the end: saving is not what is measured
        "eval.tasks=[]",  # the curves are training-time quantities; no generation needed
        "diagnostics.enabled=true", f"diagnostics.interval={interval}", f"diagnostics.max_layers={max_layers}",
        "progress=false", "force_rerun=true", f"paths.results_dir={results_dir}", *overrides,
    ])
    started = time.time()
    # The Trainer prints every logged step (here: every step) to stdout; the curves come from steps.jsonl.
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = run(cfg)
    seconds = time.time() - started
    loss, diag = _read_steps(RunDir.for_config(cfg).path / "steps.jsonl")
    diag_steps = sorted(diag)
    built = build(cfg.method, _convert_="all")
    out: dict[str, Any] = {
        "method": method,
        "learning_rate": float(cfg.trainer.learning_rate),
        "scaling": float(built.scaling),
        "rank": int(cfg.rank),
        "warmup_steps": int(cfg.method.get("warmup_steps", 0) or 0),  # SDS: plain-LoRA steps before the SVD
        "steps": int(metrics["train"]["steps"]),
        "seconds": seconds,
        "step": sorted(loss),
        "loss": [loss[s] for s in sorted(loss)],
        "diag_step": diag_steps,
    }
    for key in CURVE_KEYS:
        out[key] = [diag[s].get(key, math.nan) for s in diag_steps]
    return out


def embedded_curves(steps: int = 300, interval: int = 5, max_layers: int = ALL_LAYERS,
                    overrides: Sequence[str] = (), results_dir: str | Path | None = None,
                    methods: Sequence[str] = METHODS) -> dict[str, dict[str, Any]]:
    """LoRA and SDS-LoRA on the embedded task, same seed/data/steps; ``{method: train_with_diagnostics(...)}``.

    ``results_dir`` keeps the run directories (default: a temporary directory, removed afterwards); runs are
    always re-trained (``force_rerun``), so results never come from a stale run of older code.
    """
    if results_dir is not None:
        return {m: train_with_diagnostics(m, steps, interval, Path(results_dir), max_layers, overrides)
                for m in methods}
    with tempfile.TemporaryDirectory(prefix="loralab-curves-") as tmp:
        return {m: train_with_diagnostics(m, steps, interval, Path(tmp), max_layers, overrides) for m in methods}

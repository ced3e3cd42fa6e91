"""A run's training curves from its ``steps.jsonl``: loss, learning rate, gradient norm and, when diagnostics
were on, the mechanism metrics, drawn into ``<run>/curves.png``.

Figures are built on matplotlib's ``Figure`` with the Agg canvas directly (no pyplot, no display, no global
backend switch), so plotting works headless and never touches the caller's matplotlib state.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loralab.io import atomic_write_bytes

CURVES_FILE = "curves.png"
STEPS_FILE = "steps.jsonl"

# Trainer log keys drawn first, one panel each, in this order (when logged)
TRAINING_PANELS = (("loss", "training loss"), ("learning_rate", "learning rate"), ("grad_norm", "gradient norm"))
# diagnostics: one panel per metric family (the ``diag/<family>_<part>`` keys); the SDS phase flag is not drawn
DIAGNOSTIC_PANELS = (
    ("align", "alignment cos(G, G̃)"),
    ("erank", "effective rank of ∇A, ∇B"),
    ("srank", "stable rank"),
    ("subspace", "subspace overlap with previous"),
    ("norm", "‖ΔW‖_F"),
)
Series = dict[str, dict[int, float]]  # key -> step -> value


def read_steps(path: Path) -> Series:
    """Every numeric log key of ``steps.jsonl`` as step → value; a resumed run's later entry for a step wins.

    A half-written last line (a killed run) is ignored."""
    series: Series = {}
    path = Path(path)
    if not path.is_file():
        return series
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, {})[step] = float(value)
    return series


def _points(values: Mapping[int, float]) -> tuple[list[int], list[float]]:
    steps = sorted(values)
    return steps, [values[s] for s in steps]


def panels(series: Series) -> list[tuple[str, dict[str, Mapping[int, float]]]]:
    """(title, {label: curve}) of every panel there is data for, training first, then diagnostics."""
    found: list[tuple[str, dict[str, Mapping[int, float]]]] = []
    for key, title in TRAINING_PANELS:
        if series.get(key):
            found.append((title, {key: series[key]}))
    for family, title in DIAGNOSTIC_PANELS:
        curves = {k.removeprefix("diag/"): v for k, v in sorted(series.items())
                  if k.startswith(f"diag/{family}") and any(not math.isnan(x) for x in v.values())}
        if curves:
            found.append((title, curves))
    return found


def curves_figure(series: Series, title: str) -> Figure | None:
    """The run's panels on one figure (two columns), or None when nothing was logged."""
    found = panels(series)
    if not found:
        return None
    cols = 2 if len(found) > 1 else 1
    rows = math.ceil(len(found) / cols)
    fig = Figure(figsize=(5.2 * cols, 2.8 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel_title, curves) in zip(axes, found):
        for label, values in curves.items():
            steps, ys = _points(values)
            ax.plot(steps, ys, marker="." if len(steps) < 30 else None, label=label)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(found):]:
        ax.set_visible(False)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_curves(run_dir: Path) -> Path | None:
    """Draw ``<run_dir>/curves.png`` from its ``steps.jsonl``; None (nothing written) when nothing was logged."""
    run_dir = Path(run_dir)
    fig = curves_figure(read_steps(run_dir / STEPS_FILE), run_dir.name)
    if fig is None:
        return None
    out = run_dir / CURVES_FILE
    atomic_write_bytes(out, png_bytes(fig))
    return out


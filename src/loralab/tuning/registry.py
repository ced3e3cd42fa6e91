"""TUNED entries: ``conf/tuned_lr/<sweep>/<model>_<method>_<data set>.yaml``, one per tuned row, composed by
``conf/config.yaml`` after the experiment (so they replace the INFERRED or PAPER rate, label included)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from loralab.io import atomic_write_text
from loralab.lr_source import labelled_lr
from loralab.provenance import git_state
from loralab.tuning.selection import RULE
from loralab.tuning.tune import Selection

PROXY_TEXT = ("{steps} steps on the first {train_examples} training examples (the row's own recipe otherwise), "
              "held-out loss on the last {heldout_examples}, rank {rank}, seed {seed}")


def entry_path(out_dir: Path, sweep: str, model: str, method: str, dataset: str) -> Path:
    return Path(out_dir) / sweep / f"{model}_{method}_{dataset}.yaml"


def _loss(value: float) -> float | str:
    return value if math.isfinite(value) else "diverged"


def entry(selection: Selection, table: str, replaced: DictConfig | None = None,
          date: str | None = None, commit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``lr_source`` node of a TUNED entry."""
    cell, spec = selection.cell, selection.spec
    state = commit if commit is not None else git_state()
    sha = state.get("commit") or "unknown (not a git checkout)"
    previous = labelled_lr(replaced) if replaced is not None else None
    grid_text = ", ".join(f"{lr:g}" for lr in spec.grid)
    note = (f"lowest held-out loss over the grid {{{grid_text}}}"
            + (f" (extended to {', '.join(f'{r.lr:g}' for r in selection.results if r.lr not in spec.grid)})"
               if len(selection.results) > len(spec.grid) else "")
            + f"; proxy: {PROXY_TEXT.format(**spec.budget())}"
            + (f"; still on the {selection.edge} edge after {spec.extend} extension(s)" if selection.edge else ""))
    return {
        "label": "TUNED",
        "lr": float(selection.lr),
        "note": note,
        "tuned": {
            "rule": RULE,
            "grid": [float(x) for x in spec.grid],
            "extend": spec.extend,
            "budget": spec.budget(),
            "losses": [{"lr": r.lr, "heldout_loss": _loss(r.heldout_loss), "run": r.run} for r in selection.results],
            "edge": selection.edge,
            "replaced": None if previous is None else {"lr": previous.lr, "label": previous.label},
            "table": table,
            "date": date or time.strftime("%Y-%m-%d"),
            "commit": sha + (" (uncommitted changes)" if state.get("dirty") else ""),
        },
    }


def write_entry(selection: Selection, out_dir: Path, table: str, replaced: DictConfig | None = None,
                **provenance: Any) -> Path:
    """Write (atomically) the row's TUNED entry; returns its path."""
    cell = selection.cell
    node = entry(selection, table, replaced, **provenance)
    was = node["tuned"]["replaced"]
    header = (f"# @package _global_\n"
              f"# TUNED by `make tune-lr EXPERIMENT={table}` (loralab.tuning): the learning rate of {cell.method} on "
              f"{cell.dataset} ({cell.model}) in {cell.sweep}.\n"
              + (f"# Replaces the {was['label'] or 'unlabelled'} rate {was['lr']:g} of the files composed before it; "
                 f"delete this file to go back to it.\n" if was and was["lr"] is not None else ""))
    body = yaml.safe_dump({"lr_source": node}, sort_keys=False, allow_unicode=True, width=110)
    text = header + body + "trainer:\n  learning_rate: ${lr_source.lr}\n"
    path = entry_path(out_dir, cell.sweep, cell.model, cell.method, cell.dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path

"""TUNED entries: ``conf/tuned_lr/<sweep>/<model>_<method>_<data set>.yaml``, one per tuned row, composed by
``conf/config.yaml`` after the experiment (so they replace the INFERRED or PAPER rate, label included).

An entry holds a rate per tuned rank and picks the run's (``lr: ${oc.select:.tuned.lr_by_rank.${rank}}``): a
run at a rank the row was not tuned at resolves to no rate and is refused, never given another rank's rate or
the rate the entry replaced. Re-tuning some ranks of a row keeps the others' rates and provenance.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig

from loralab.io import atomic_write_text
from loralab.lr_source import labelled_lr
from loralab.provenance import git_state
from loralab.tuning.selection import RULE
from loralab.tuning.tune import Selection

PROXY_TEXT = ("{steps} steps on the first {train_examples} training examples (the row's own recipe otherwise), "
              "held-out loss on the last {heldout_examples}, seed {seed}")
PICK = "${oc.select:.tuned.lr_by_rank.${rank}}"
PER_RANK = ("lr_by_rank", "losses", "edge", "replaced")


def entry_path(out_dir: Path, sweep: str, model: str, method: str, dataset: str) -> Path:
    return Path(out_dir) / sweep / f"{model}_{method}_{dataset}.yaml"


def _loss(value: float) -> float | str:
    return value if math.isfinite(value) else "diverged"


def _previous(path: Path) -> dict[str, Any]:
    """The ``tuned`` node of an existing entry (its other ranks are kept), {} when there is none."""
    if not path.is_file():
        return {}
    node = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("lr_source") or {}
    tuned = node.get("tuned") if node.get("label") == "TUNED" else None
    if not isinstance(tuned, dict) or not all(isinstance(tuned.get(k), dict) for k in PER_RANK):
        return {}  # none, or not a per-rank entry: nothing to keep
    return tuned


def entry(selections: Sequence[Selection], table: str, replaced: dict[int, DictConfig] | None = None,
          previous: dict[str, Any] | None = None, date: str | None = None,
          commit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``lr_source`` node of a TUNED entry for one row, from the selections of (some of) its ranks."""
    spec = selections[0].spec
    state = commit if commit is not None else git_state()
    sha = state.get("commit") or "unknown (not a git checkout)"
    kept = {k: dict((previous or {}).get(k) or {}) for k in PER_RANK}
    if previous and (previous.get("grid"), previous.get("budget")) != ([float(x) for x in spec.grid], spec.budget()):
        kept = {k: {} for k in PER_RANK}  # other ranks were tuned under another declaration: not kept
    for sel in selections:
        rank = str(sel.cell.rank)
        before = labelled_lr(replaced[sel.cell.rank]) if replaced and sel.cell.rank in replaced else None
        kept["lr_by_rank"][rank] = float(sel.lr)
        kept["losses"][rank] = [{"lr": r.lr, "heldout_loss": _loss(r.heldout_loss), "run": r.run} for r in sel.results]
        kept["edge"][rank] = sel.edge
        kept["replaced"][rank] = None if before is None else {"lr": before.lr, "label": before.label}
    ranks = sorted(kept["lr_by_rank"], key=int)
    extended = sorted({r["lr"] for rank in ranks for r in kept["losses"][rank]} - set(spec.grid))
    edges = [f"r {rank} on the {kept['edge'][rank]} edge" for rank in ranks if kept["edge"][rank]]
    note = (f"lowest held-out loss over the grid {{{', '.join(f'{lr:g}' for lr in spec.grid)}}}"
            + (f" (extended to {', '.join(f'{lr:g}' for lr in extended)})" if extended else "")
            + "; " + ", ".join(f"r {rank}: {kept['lr_by_rank'][rank]:g}" for rank in ranks)
            + f"; proxy: {PROXY_TEXT.format(**spec.budget())}"
            + (f"; still {', '.join(edges)} after {spec.extend} extension(s)" if edges else ""))
    return {
        "label": "TUNED",
        "lr": PICK,
        "note": note,
        "tuned": {
            "lr_by_rank": {rank: kept["lr_by_rank"][rank] for rank in ranks},
            "rule": RULE,
            "grid": [float(x) for x in spec.grid],
            "extend": spec.extend,
            "budget": spec.budget(),
            "losses": {rank: kept["losses"][rank] for rank in ranks},
            "edge": {rank: kept["edge"][rank] for rank in ranks},
            "replaced": {rank: kept["replaced"].get(rank) for rank in ranks},
            "table": table,
            "date": date or time.strftime("%Y-%m-%d"),
            "commit": sha + (" (uncommitted changes)" if state.get("dirty") else ""),
        },
    }


def write_entry(selections: Sequence[Selection], out_dir: Path, table: str,
                replaced: dict[int, DictConfig] | None = None, **provenance: Any) -> Path:
    """Write (atomically) the TUNED entry of the row the ``selections`` (one per rank) belong to; its path.
    ``replaced``: the config each rank ran at before (for the record of the rate the entry replaces)."""
    cell = selections[0].cell
    if any(s.cell.row != cell.row for s in selections):
        raise ValueError("selections of different rows cannot share an entry")
    if replaced is None:
        from loralab.tables.grid import compose

        replaced = {s.cell.rank: compose(s.cell.job) for s in selections}
    path = entry_path(out_dir, cell.sweep, cell.model, cell.method, cell.dataset)
    node = entry(selections, table, replaced, _previous(path), **provenance)
    was = [f"r {rank}: {r['label'] or 'unlabelled'} {r['lr']:g}" for rank, r in node["tuned"]["replaced"].items()
           if r and r["lr"] is not None]
    header = (f"# @package _global_\n"
              f"# TUNED by `make tune-lr EXPERIMENT={table}` (loralab.tuning): the learning rate of {cell.method} on "
              f"{cell.dataset} ({cell.model}) in {cell.sweep}, per rank.\n"
              + (f"# Replaces the rates of the files composed before it ({'; '.join(was)}); delete this file to go "
                 f"back to them.\n" if was else ""))
    body = yaml.safe_dump({"lr_source": node}, sort_keys=False, allow_unicode=True, width=110)
    text = header + body + "trainer:\n  learning_rate: ${lr_source.lr}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path

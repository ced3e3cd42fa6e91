"""Build a paper-shaped Markdown table: for each cell, ours | paper | Δ.

A table is declared by the ``table:`` block of an experiment config:

    table:
      name: sds_table2
      reference: results/paper/sds_table2.yaml   # or null when no paper reports these cells
      row_keys: [model, method, rank]            # run fields that identify a row
      filter: {dataset: metamathqa}              # which finished runs belong to the table
      columns:
        - {header: GSM8K, task: gsm8k, metric: exact_match, scale: 100}

Runs that differ only by seed are pooled (mean ± std over seeds). A column's runs must share one evaluation
protocol: mixing protocols in a column is refused, since such numbers are not comparable.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError
from loralab.io import read_json
from loralab.tables.reference import ReferenceTable, load_reference


@dataclass(frozen=True)
class Column:
    header: str
    task: str
    metric: str
    scale: float = 1.0


@dataclass
class RunResult:
    run: dict[str, Any]
    protocol: str
    scores: dict[str, dict[str, float]]
    path: Path

    @property
    def smoke(self) -> bool:
        return bool(self.run.get("smoke"))


def collect_runs(runs_dir: Path) -> list[RunResult]:
    """Every finished run under ``runs_dir`` (unfinished and failed runs have no metrics.json)."""
    results = []
    for metrics_file in sorted(Path(runs_dir).glob("*/metrics.json")):
        status_file = metrics_file.parent / "status.json"
        if status_file.exists() and read_json(status_file).get("state") != "finished":
            continue
        metrics = read_json(metrics_file)
        results.append(RunResult(metrics["run"], metrics["eval"]["protocol"], metrics["eval"]["tasks"],
                                 metrics_file.parent))
    return results


def _matches(run: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(str(run.get(k)) == str(v) for k, v in wanted.items())


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(values: list[float], smoke: bool) -> tuple[str, float | None]:
    if not values:
        return "—", None
    mean = statistics.fmean(values)
    text = _fmt(mean) + (f" ± {statistics.stdev(values):.2f} (n={len(values)})" if len(values) > 1 else "")
    return text + (" (smoke)" if smoke else ""), mean


def build_table(spec: dict[str, Any], runs: list[RunResult], reference: ReferenceTable | None = None) -> str:
    row_keys: list[str] = list(spec["row_keys"])
    columns = [Column(**c) for c in spec["columns"]]
    selected = [r for r in runs if _matches(r.run, spec.get("filter") or {})]

    for column in columns:  # one protocol per column, or the numbers are not comparable
        protocols = {r.protocol for r in selected if column.task in r.scores}
        if len(protocols) > 1:
            raise ConfigError(
                f"table {spec['name']}: column {column.header!r} mixes evaluation protocols {sorted(protocols)}; "
                f"filter the runs to one protocol"
            )

    rows: list[dict[str, Any]] = []
    if reference is not None:
        rows.extend({k: row.get(k) for k in row_keys} for row in reference.rows())
    for run in selected:
        key = {k: run.run.get(k) for k in row_keys}
        if not any(_same_row(key, row) for row in rows):
            rows.append(key)

    tolerance = reference.tolerance if reference is not None else None
    header = [*row_keys] + [f"{c.header} {part}" for c in columns for part in ("ours", "paper", "Δ")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    flagged = 0
    for row in rows:
        row_runs = [r for r in selected if _same_row({k: r.run.get(k) for k in row_keys}, row)]
        cells = [_fmt_key(row.get(k)) for k in row_keys]
        for column in columns:
            values = [r.scores[column.task][column.metric] * column.scale
                      for r in row_runs if column.task in r.scores]
            ours_text, ours = _cell(values, smoke=any(r.smoke for r in row_runs))
            ref = reference.lookup(row, column.header) if reference is not None else None
            paper = ref.value if ref is not None else None
            delta = None if ours is None or paper is None else ours - paper
            mark = " ⚠" if delta is not None and tolerance is not None and abs(delta) > tolerance else ""
            flagged += bool(mark)
            cells += [ours_text, _fmt(paper), (f"{delta:+.2f}" if delta is not None else "—") + mark]
        lines.append("| " + " | ".join(cells) + " |")

    title = spec.get("title") or (reference.title if reference is not None else spec["name"])
    notes = [f"# {title}", ""]
    if reference is not None:
        notes.append(f"Paper: {reference.paper}, Table {reference.table}. ⚠ marks |Δ| > {tolerance}.")
    else:
        notes.append("No published numbers exist for these cells: the paper column is empty by design.")
    notes.append("Cells marked (smoke) come from shrunken CI runs and are not reproductions.")
    if flagged:
        notes.append(f"{flagged} cell(s) differ from the paper by more than the tolerance.")
    return "\n".join(notes + [""] + lines) + "\n"


def _same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(str(a.get(k)) == str(b.get(k)) for k in a)


def _fmt_key(value: Any) -> str:
    return "—" if value is None else str(value)


def build_from_spec(spec: dict[str, Any], runs_dir: Path, root: Path = Path(".")) -> str:
    reference = load_reference(root / spec["reference"]) if spec.get("reference") else None
    return build_table(spec, collect_runs(runs_dir), reference)

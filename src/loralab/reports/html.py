"""A table's HTML report: one self-contained file (inline CSS, plots as PNG data URIs, no script, nothing fetched).

It shows the table as the Markdown has it (ours | paper | Δ per column, ⚠ beyond the tolerance) with links from
every cell to the run directories behind it (and their ``curves.png``), the training-loss curves of every row
overlaid, and a Pareto view: the first evaluation column against trainable parameters and against step time,
with the rows that no other row beats on both axes joined by a line.

Step time is the Trainer's ``train_runtime`` over the optimiser steps of the run's last training session (a
resumed run counts only the steps after its checkpoint), so it is wall-clock time per step on the run's own
hardware: compare it across runs of one machine only.
"""
from __future__ import annotations

import base64
import html
import os
import re
import statistics
import time
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from loralab.reports.curves import CURVES_FILE, STEPS_FILE, png_bytes, read_steps
from loralab.tables.tabulate import LR_HEADER, Row, RunResult, Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
p.note { color: #444; margin: 0.3em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.key { text-align: left; font-family: monospace; }
td.flag { background: #fde2e1; } td.na { color: #999; }
a.run { font-size: 0.75em; margin-left: 0.3em; color: #2a5db0; }
img { max-width: 100%; border: 1px solid #eee; }
footer { margin-top: 2em; color: #777; font-size: 0.8em; }
"""
RESUMED_STEP = re.compile(r"checkpoint-(\d+)$")


def step_time(run: RunResult) -> float | None:
    """Seconds per optimiser step of the run's last training session (None when it trained no step)."""
    runtime = next((e["train_runtime"] for e in reversed(run.steps) if "train_runtime" in e), None)
    train = run.metrics.get("train") or {}
    steps = train.get("steps")
    if runtime is None or not isinstance(steps, int):
        return None
    resumed = RESUMED_STEP.search(str(train.get("resumed_from") or ""))
    session_steps = steps - (int(resumed[1]) if resumed else 0)
    return float(runtime) / session_steps if session_steps > 0 else None


def _row_label(row: Row, keys: Sequence[str]) -> str:
    return " ".join(str(row.key.get(k)) for k in keys if row.key.get(k) is not None)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def loss_figure(table: Table) -> Figure | None:
    """Training loss of every run, one colour per row (seeds share their row's colour)."""
    rows = [r for r in table.rows if r.runs]
    curves = [(row, run, read_steps(run.path / STEPS_FILE).get("loss")) for row in rows for run in row.runs]
    if not any(c for _, _, c in curves):
        return None
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = dict(zip((id(r) for r in rows), _colors(len(rows))))
    labelled: set[int] = set()
    for row, _, curve in curves:
        if not curve:
            continue
        steps = sorted(curve)
        label = None if id(row) in labelled else _row_label(row, table.row_keys)
        labelled.add(id(row))
        ax.plot(steps, [curve[s] for s in steps], color=colors[id(row)], label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss by row (one line per run)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(labelled) > 8 else 1)
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower cost x, higher score y), by increasing cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def pareto_figure(table: Table) -> Figure | None:
    """The first evaluation column with a value against trainable parameters and against step time, one point
    per row (tables of costs only, such as training time and memory, have no score to plot)."""
    column = next((i for i, c in enumerate(table.columns)
                   if c.source == "eval" and any(r.cells[i].ours is not None for r in table.rows)), None)
    if column is None:
        return None
    header = table.columns[column].header
    costs = {
        "trainable parameters": lambda run: (run.metrics.get("cost") or {}).get("trainable_params"),
        "step time (s)": step_time,
    }
    points = []
    for row in table.rows:
        score = row.cells[column].ours
        if score is None:
            continue
        runs = row.cells[column].runs or row.runs
        points.append((row, score, {axis: _mean(cost(r) for r in runs) for axis, cost in costs.items()}))
    if not points:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = _colors(len(points))
    for ax, axis in zip(axes, costs):
        placed = [(cost[axis], score, row, color) for (row, score, cost), color in zip(points, colors)
                  if cost[axis] is not None]
        for x, y, row, color in placed:
            ax.scatter([x], [y], color=color, s=40, zorder=3)
            ax.annotate(_row_label(row, table.row_keys), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        front = pareto_front([(x, y) for x, y, _, _ in placed])
        if len(front) > 1:
            ax.plot(*zip(*front), color="#888", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
            ax.legend(fontsize=7)
        if axis == "trainable parameters" and placed and min(x for x, *_ in placed) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
        if not placed:
            ax.text(0.5, 0.5, f"no run records {axis}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(axis)
        ax.set_ylabel(header)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{header} against cost (one point per row)", fontsize=10)
    return fig


def _img(fig: Figure | None, alt: str) -> str:
    if fig is None:
        return f'<p class="note">No data for: {html.escape(alt)}.</p>'
    data = base64.b64encode(png_bytes(fig, dpi=110)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _href(target: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix())


def _run_links(runs: Sequence[RunResult], base: Path) -> str:
    links = []
    for i, run in enumerate(runs, start=1):
        title = html.escape(run.path.name)
        links.append(f'<a class="run" href="{_href(run.path, base)}/" title="{title}">run{i}</a>')
        if (run.path / CURVES_FILE).is_file():
            links.append(f'<a class="run" href="{_href(run.path / CURVES_FILE, base)}" title="{title}">curves</a>')
    return "".join(links)


def _key_text(value: object) -> str:
    return "—" if value is None else str(value)


def table_html(table: Table, base: Path) -> str:
    head_top = "".join(f'<th rowspan="2">{html.escape(k)}</th>' for k in table.row_keys)
    head_top += "".join(f'<th colspan="3">{html.escape(c.header)}</th>' for c in table.columns)
    head_top += f'<th rowspan="2">{html.escape(LR_HEADER)}</th>'
    head_sub = "<th>ours</th><th>paper</th><th>Δ</th>" * len(table.columns)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="key">{html.escape(_key_text(row.key.get(k)))}</td>' for k in table.row_keys)
        for cell in row.cells:
            ours, paper, delta = (html.escape(t) for t in cell.texts)
            if cell.not_applicable:
                cells += f'<td class="na">{ours}</td><td class="na">{paper}</td><td class="na">{delta}</td>'
                continue
            cells += f"<td>{ours}{_run_links(cell.runs, base)}</td><td>{paper}</td>"
            cells += f'<td class="flag">{delta}</td>' if cell.flagged else f"<td>{delta}</td>"
        cells += f'<td class="key">{html.escape(row.lr)}</td>'
        body.append(f"<tr>{cells}</tr>")
    return (f'<table id="results"><thead><tr>{head_top}</tr><tr>{head_sub}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def render_html(table: Table, out_file: Path) -> str:
    """The report for ``table``, links relative to where ``out_file`` will be written."""
    base = Path(out_file).parent
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    n_runs = len({id(r) for row in table.rows for r in row.runs})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(table.title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(table.title)}</h1>
{notes}
{table_html(table, base)}
<h2>Training loss</h2>
{_img(loss_figure(table), "training loss of every row")}
<h2>Score against cost</h2>
{_img(pareto_figure(table), "score against trainable parameters and step time")}
<footer>Table {html.escape(table.name)}: {len(table.rows)} rows from {n_runs} runs; written
{time.strftime("%Y-%m-%d %H:%M:%S")} by scripts/build_table.py.</footer>
</body></html>
"""

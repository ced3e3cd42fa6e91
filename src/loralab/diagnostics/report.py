"""A claim = one statement from a paper, the criterion it was checked against, pass/fail and the numbers.

``render_report`` turns a list of claims into the Markdown file ``scripts/make_figures.py`` writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Claim", "format_value", "render_report", "write_report"]


@dataclass
class Claim:
    key: str  # short id, e.g. "a"
    source: str  # e.g. "LoRAM Prop. 1 / Fig. 2a"
    statement: str  # the paper's claim in one sentence
    criterion: str  # the measurable test applied here
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    note: str = ""


def format_value(v: Any) -> str:
    """Compact rendering: floats to 4 significant digits, lists element-wise, None as '—'."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def render_report(claims: list[Claim], title: str = "Diagnostics reproductions", preamble: str = "") -> str:
    n_pass = sum(c.passed for c in claims)
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += [f"**{n_pass}/{len(claims)} claims pass.**", "", "| id | source | claim | result |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.key} | {c.source} | {c.statement} | {'PASS' if c.passed else 'FAIL'} |")
    lines.append("")
    for c in claims:
        lines += [f"## {c.key}. {c.source} — {'PASS' if c.passed else 'FAIL'}", "", f"*Claim:* {c.statement}", ""]
        lines += [f"*Criterion:* {c.criterion}", "", "| quantity | measured |", "|---|---|"]
        for k, v in c.numbers.items():
            lines.append(f"| {k} | {format_value(v)} |")
        lines.append("")
        if c.note:
            lines += [f"*Note:* {c.note}", ""]
        for fig in c.figures:
            lines += [f"![{c.key}]({fig})", ""]
    return "\n".join(lines)


def write_report(claims: list[Claim], path: str | Path, **kwargs: Any) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(claims, **kwargs), encoding="utf-8")
    return out

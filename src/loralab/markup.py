"""Spans of markup in model and dataset text: the last LaTeX ``\\boxed{}`` and the first fenced code block.

Dataset preparation (MATH's reference answers, Code-Feedback's reference code) and answer scoring read them
the same way, so both import them from here.
"""
from __future__ import annotations

import re


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with nested braces balanced, or None.

    MATH's reference solutions mark their final answer this way, e.g. ``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start == -1:
        return None
    rest = text[start:]
    if rest.startswith("\\boxed ") and "{" not in rest.split(" ", 1)[1][:1]:  # "\boxed 5" form
        return rest.split(" ", 1)[1].split("$")[0].strip() or None
    open_at = rest.find("{")
    if open_at == -1:
        return None
    depth = 0
    for i in range(open_at, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1:i]
    return None  # unbalanced: the box was never closed


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_FENCES = ("python", "python3", "py", "")


def extract_code(generation: str) -> tuple[str, str]:
    """``(code, how)``: the first fenced block tagged Python or untagged (``how='fenced'``; a block the length
    limit cut off counts up to the end), else the whole generation (``how='raw'``) — a model that continues a
    function body writes no fence."""
    for match in _FENCE.finditer(generation):
        if match.group(1).lower() in PYTHON_FENCES:
            return match.group(2).rstrip() + "\n", "fenced"
    return generation, "raw"

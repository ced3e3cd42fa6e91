"""Answer extraction shared by every generative suite (the embedded task, GSM8K, MATH, commonsense, code).

The suite's YAML names the pattern, which match counts (``occurrence``), the fallback and the normaliser, so
the protocol lives in configuration and one code path serves all suites:

* MetaMath-style outputs end with "The answer is: N"; MetaMath's own scorer reads the text after the *last*
  such marker (``occurrence: last``) and gives no credit without one (``fallback: none``);
* LLM-Adapters' commonsense scorer takes the *first* answer keyword (``true``, ``solution2``, ``answer3``,
  ``ending1``, ``option2``) anywhere in the response (``occurrence: first``), case-sensitively;
* code suites take the first fenced Python block (:func:`extract_code`).

When the pattern does not match, ``fallback: last_number`` takes the last number in the text (the usual
GSM8K fallback of other harnesses); ``fallback: none`` scores the sample as unanswered.
"""
from __future__ import annotations

import math
import re
from typing import Callable

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# A MetaMath-style number: optional sign, digits with thousands separators, a decimal part or a fraction.
_METAMATH_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*)?\.?\d+(?:/\d+)?")
OCCURRENCES = ("first", "last")
FALLBACKS = ("last_number", "none")


def normalize_number(text: str | None) -> str | None:
    """'1,234.0' → '1234', '$5.' → '5', '-3.50' → '-3.5'; None when there is no number."""
    if text is None:
        return None
    match = NUMBER.search(text)
    if match is None:
        return None
    value = match.group(0).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return "0" if value in ("-0", "") else value


def normalize_metamath_number(text: str | None) -> str | None:
    """MetaMath's GSM8K reading of an answer: its first number, separators dropped, a/b divided, then rounded
    to the nearest integer (GSM8K answers are integers). '3/4' → '1', '$1,234.' → '1234', 'ten' → None."""
    if text is None:
        return None
    match = _METAMATH_NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0).replace(",", "")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(token)
    except (ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value):
        return None
    return str(int(round(value)))


def normalize_text(text: str | None) -> str | None:
    return None if text is None else " ".join(text.strip().strip(".").lower().split())


def normalize_strip(text: str | None) -> str | None:
    """Surrounding whitespace only: LLM-Adapters compares the matched keyword as it is, case included."""
    return None if text is None else text.strip()


def normalize_math_answer(text: str | None) -> str | None:
    """MetaMath's MATH reading: the marker's remainder, stripped, one trailing period and enclosing $ dropped."""
    if text is None:
        return None
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text or None


NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "number": normalize_number,
    "metamath_number": normalize_metamath_number,
    "text": normalize_text,
    "strip": normalize_strip,
    "math": normalize_math_answer,
}


def extract_answer(generation: str, pattern: str, fallback: str = "last_number",
                   occurrence: str = "first") -> str | None:
    """The raw answer string in a generation (group 1 of the chosen match of ``pattern``), or None."""
    if occurrence not in OCCURRENCES:
        raise ValueError(f"occurrence={occurrence!r}: valid values are {list(OCCURRENCES)}")
    matches = list(re.finditer(pattern, generation))
    if matches:
        chosen = matches[0] if occurrence == "first" else matches[-1]
        return chosen.group(1).strip()
    if fallback == "last_number":
        numbers = NUMBER.findall(generation)
        return numbers[-1] if numbers else None
    if fallback == "none":
        return None
    raise ValueError(f"fallback={fallback!r}: valid values are 'last_number' and 'none'")


def truncate_at_stop(text: str, stops: list[str] | tuple[str, ...] | None) -> str:
    """The text before the earliest stop string (greedy decoding would have stopped there)."""
    cut = len(text)
    for stop in stops or ():
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


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

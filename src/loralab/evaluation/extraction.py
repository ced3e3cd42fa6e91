"""Answer extraction shared by every generative suite (the embedded task, GSM8K, MATH, commonsense, code).

A suite's YAML declares each task's reading as a filter chain (:mod:`loralab.evaluation.filters`): a ``regex``
step (pattern, which match counts — ``occurrence`` — and the fallback) and a ``normalize`` step naming one of
:data:`NORMALIZERS`, so the protocol lives in configuration and one code path serves all suites:

* MetaMath-style outputs end with "The answer is: N"; MetaMath's own scorer reads the text after the *last*
  such marker (``occurrence: last``) and gives no credit without one (``fallback: none``); its GSM8K and MATH
  readings of that text are :func:`normalize_metamath_number` and :func:`normalize_metamath_math`;
* LLM-Adapters' commonsense scorer takes the *first* answer keyword (``true``, ``solution2``, ``answer3``,
  ``ending1``, ``option2``) anywhere in the response (``occurrence: first``), case-sensitively;
* code suites take the first fenced Python block (:func:`extract_code`).

When the pattern does not match, ``fallback: last_number`` takes the last number in the text (the usual
GSM8K fallback of other harnesses); ``fallback: none`` scores the sample as unanswered.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Callable

from loralab.markup import PYTHON_FENCES, extract_code, last_boxed  # noqa: F401 (part of this module's API)

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# MetaMath's GSM8K number (eval_gsm8k.py): optional sign, digits, at most ONE of '.', ',' or '/', digits. So
# "1,234,567" reads as 1,234 and "$1,234.56" as 1,234: the reference's quirk, kept by the paper protocol.
_METAMATH_NUMBER = re.compile(r"[-+]?\d*[.,/]?\d+")
# A number as written: sign, digits (thousands grouped by commas, or not), a decimal part, a denominator.
_WRITTEN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")
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
    """MetaMath's GSM8K reading of the text after its answer marker, quirks included: the first match of
    sign/digits/one separator/digits, commas dropped, a/b divided (a zero denominator "0" reads as the
    numerator), rounded half-to-even to an integer. '1,234,567' → '1234', '$1,234.56' → '1234',
    '1.5/3' → '2' (reads 1.5), '3/4' → '1', 'ten' → None. Where MetaMath's scorer would crash (a denominator
    such as '00') the answer counts as unreadable."""
    if text is None:
        return None
    match = _METAMATH_NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0)
    if "/" in token:
        numerator, denominator = token.split("/")
        if not any(c.isdigit() for c in numerator):  # "/3", "-/3": MetaMath's is_number check fails
            return None
        if denominator == "0":
            value = float(numerator)
        else:
            try:
                fraction = Fraction(token)
            except ZeroDivisionError:
                return None
            value = fraction.numerator / fraction.denominator
    else:
        value = float(token.replace(",", ""))
        if math.isinf(value):
            return None
    return str(round(value))


def normalize_exact_number(text: str | None) -> str | None:
    """The first number as written, compared by its exact value (the corrected GSM8K reading): thousands
    separators only in groups of three, decimals kept, a/b divided, no rounding. '1,234,567' → '1234567',
    '2.50' → '5/2', '6/3' → '2', '$1,234.56' → '30864/25'."""
    if text is None:
        return None
    for match in _WRITTEN_NUMBER.finditer(text):
        token = match.group(0)
        if not any(c.isdigit() for c in token):
            continue  # an empty match, or a lone sign
        numerator, _, denominator = token.replace(",", "").partition("/")
        try:
            value = Fraction(numerator) / Fraction(denominator or 1)
        except (ValueError, ZeroDivisionError):
            return None
        return str(value)  # "2" or "5/2": Fraction prints reduced
    return None


def normalize_text(text: str | None) -> str | None:
    return None if text is None else " ".join(text.strip().strip(".").lower().split())


def normalize_strip(text: str | None) -> str | None:
    """Surrounding whitespace only: LLM-Adapters compares the matched keyword as it is, case included."""
    return None if text is None else text.strip()


def normalize_metamath_math(text: str | None) -> str | None:
    """MetaMath's MATH reading (eval_math.py) of the text after its answer marker, cut before the first
    '.\\n' — the cut belongs in the chain's ``regex`` pattern (the raw text must be cut before it is stripped:
    'x.\\n ' → 'x') — then stripped, one trailing period dropped. Enclosing $ stay: MetaMath's comparison
    (is_equiv) does not remove them either."""
    if text is None:
        return None
    text = text.strip()
    return (text[:-1] if text.endswith(".") else text).strip()


def normalize_math_answer(text: str | None) -> str | None:
    """:func:`normalize_metamath_math`, then enclosing $ dropped (math-verify reads the bare expression)."""
    text = normalize_metamath_math(text)
    if len(text or "") >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text or None


NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "number": normalize_number,
    "metamath_number": normalize_metamath_number,
    "exact_number": normalize_exact_number,
    "text": normalize_text,
    "strip": normalize_strip,
    "metamath_math": normalize_metamath_math,
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

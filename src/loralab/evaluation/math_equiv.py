"""MATH answer equivalence: math-verify first, a normalised string comparison only where it cannot parse.

String equality undercounts MATH (``\\frac{1}{2}`` vs ``0.5`` vs ``\\dfrac12``), so answers are compared as
mathematical objects by math-verify. Where math-verify cannot parse one side (it finds no mathematical object,
only the raw string, or it raises), the two strings are compared after a light LaTeX normalisation, and the
sample records that the fallback was used (``comparison: string``) so a result can say how many of its
verdicts are string-based.
"""
from __future__ import annotations

import re

COMPARISONS = ("math_verify", "string")


def _wrap(answer: str) -> str:
    # math-verify reads LaTeX between $ delimiters most reliably; bare answers get wrapped once.
    answer = answer.strip()
    return answer if answer.startswith("$") or answer.startswith("\\(") else f"${answer}$"


def canonical_string(answer: str) -> str:
    """A light normalisation for the fallback: spacing, \\left/\\right, \\dfrac, \\text{}, degrees, $ and '.'."""
    s = answer.strip().strip("$").strip()
    s = s.rstrip(".")
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mbox|mathrm)\{\s*([^{}]*)\}", r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("dfrac", "frac"),
                     ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\$", ""), ("\\%", ""), ("%", "")):
        s = s.replace(old, new)
    return re.sub(r"\s+", "", s)


def _has_object(parsed: list) -> bool:
    return any(not isinstance(item, str) for item in parsed)


def math_equal(prediction: str | None, gold: str, timeout_s: int = 5) -> tuple[bool, str]:
    """``(equal, comparison)`` where comparison is ``math_verify`` or ``string`` (the fallback was needed)."""
    if prediction is None:
        return False, "math_verify"  # nothing extracted: wrong whichever way it is compared
    try:
        from math_verify import parse, verify

        parsed_gold = parse(_wrap(gold), parsing_timeout=timeout_s)
        parsed_prediction = parse(_wrap(prediction), parsing_timeout=timeout_s)
        # parse() falls back to echoing the raw string when no LaTeX/expression reading exists; only a
        # mathematical object on both sides makes math-verify's verdict more than string equality.
        if _has_object(parsed_gold) and _has_object(parsed_prediction):
            return bool(verify(parsed_gold, parsed_prediction, timeout_seconds=timeout_s)), "math_verify"
    except Exception:  # math-verify raises on pathological input or outside the main thread (signal timeouts)
        pass
    return canonical_string(prediction) == canonical_string(gold), "string"

"""MATH answer equivalence, two comparators that never share a protocol (a table column holds one of them):

* ``is_equiv`` — the paper protocol's (MetaMath's ``util.is_equiv``, from Hendrycks et al.'s MATH code): both
  answers go through a fixed string normalisation (:func:`metamath_canonical`) and must then be equal. Where a
  step of that normalisation fails on an answer, MetaMath compares the two raw strings instead; so does
  :func:`is_equiv`. Implemented here from its rules; the rules, quirks included, are the protocol.
* ``math_verify`` — mathematical equivalence by math-verify (``0.50`` = ``\\frac12``, ``\\sqrt{50}`` =
  ``5\\sqrt2``, ``1,000`` = ``1000``): more lenient, and not the papers' measurement. Where math-verify cannot
  parse one side (it finds no mathematical object, only the raw string, or it raises), the two strings are
  compared after a light LaTeX normalisation, and the sample records that the fallback was used
  (``comparison: string``) so a result can say how many of its verdicts are string-based.
"""
from __future__ import annotations

import re

COMPARISONS = ("math_verify", "string")


# ------------------------------------------------------------------------------------ MetaMath is_equiv
class _Unreadable(Exception):
    """A normalisation step fails on this string (MetaMath's raises there); the raw strings are compared."""


def _drop_units(s: str) -> str:
    # "\text{ " only ever introduces units on the right; more than one such group is an error in MetaMath
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise _Unreadable(s)
    return parts[0]


def _brace_sqrt(s: str) -> str:
    # \sqrt3 → \sqrt{3}: only the one character after \sqrt is braced
    pieces = s.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        if not piece:
            raise _Unreadable(s)  # \sqrt at the end, or twice in a row
        out += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return out


def _brace_fracs(s: str) -> str:
    # \frac12 → \frac{1}{2}, \frac1{72} → \frac{1}{72}; a \frac followed by one character leaves s unchanged
    pieces = s.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if not piece:
            raise _Unreadable(s)  # \frac at the end, or twice in a row
        if piece[0] == "{":
            out += piece
        elif len(piece) < 2:
            return s
        elif piece[1] != "{":
            out += "{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
        else:
            out += "{" + piece[0] + "}" + piece[1:]
    return out


def _slash_to_frac(s: str) -> str:
    # "3/4" → \frac{3}{4} when both sides are integers written plainly; a non-integer side is an error
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError as err:
        raise _Unreadable(s) from err
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def metamath_canonical(answer: str) -> str:
    """MetaMath's normalisation of a MATH answer, step by step in its order; raises :class:`_Unreadable` where
    a step of MetaMath's fails (its ``is_equiv`` then compares the raw strings)."""
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _drop_units(s).replace("\\%", "").replace("\\%", "")  # twice, as MetaMath does: "\\\\%%" → ""
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" → " 5"
        s = sides[1]
    s = _brace_sqrt(s) if "\\sqrt" in s else s
    s = _brace_fracs(s.replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def is_equiv(prediction: str | None, gold: str | None) -> bool:
    """MetaMath's MATH verdict: the normalised strings are equal (raw strings where normalisation fails)."""
    if prediction is None or gold is None:
        return prediction is None and gold is None
    try:
        return metamath_canonical(prediction) == metamath_canonical(gold)
    except _Unreadable:
        return prediction == gold


RAW_PREFIX = "\n(raw) "  # never in a canonical form: the first step removes every newline


def equivalence_key(answer: str) -> str:
    """A string with ``is_equiv(a, b) == (equivalence_key(a) == equivalence_key(b))``: the canonical form, or
    the raw string behind a prefix no canonical form has. Lets an exact-match scorer (lm-eval's) give
    ``is_equiv``'s verdicts."""
    try:
        return metamath_canonical(answer)
    except _Unreadable:
        return RAW_PREFIX + answer


# --------------------------------------------------------------------------------------- math-verify


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

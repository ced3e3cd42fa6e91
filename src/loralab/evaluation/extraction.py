"""Answer extraction shared by every generative suite (the embedded task, GSM8K, MATH, commonsense).

The suite's YAML names the pattern and the normaliser, so the protocol lives in configuration and one code
path serves all suites. MetaMath-style outputs end with "The answer is: N"; the pattern's first group is the
answer. When the pattern does not match, ``fallback: last_number`` takes the last number in the text (the
usual GSM8K fallback); ``fallback: none`` scores the sample as unanswered.
"""
from __future__ import annotations

import re
from typing import Callable

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


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


def normalize_text(text: str | None) -> str | None:
    return None if text is None else " ".join(text.strip().strip(".").lower().split())


NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "number": normalize_number,
    "text": normalize_text,
}


def extract_answer(generation: str, pattern: str, fallback: str = "last_number") -> str | None:
    """The raw answer string in a generation, or None."""
    match = re.search(pattern, generation)
    if match is not None:
        return match.group(1).strip()
    if fallback == "last_number":
        numbers = NUMBER.findall(generation)
        return numbers[-1] if numbers else None
    if fallback == "none":
        return None
    raise ValueError(f"fallback={fallback!r}: valid values are 'last_number' and 'none'")

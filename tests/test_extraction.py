"""Golden cases for the answer extraction every generative suite uses (MetaMath/GSM8K answer format)."""
import pytest

from loralab.evaluation.extraction import extract_answer, normalize_number, normalize_text

PATTERN = r"The answer is:?\s*(-?[\d,]*\.?\d+)"


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("3+4=7. The answer is: 7", "7"),                       # correct, canonical
        ("The answer is 1,234.", "1234"),                      # thousands separator, no colon
        ("so 5-9=-4. The answer is: -4", "-4"),                # negative
        ("The answer is: 2.50", "2.5"),                        # decimal trailing zero
        ("The answer is: 3. The answer is: 8", "3"),           # several candidates: the first marked one
        ("12+3=15 and then 15", "15"),                         # unmarked: fallback to the last number
        ("no number at all", None),                            # malformed
    ],
)
def test_gsm8k_style_extraction(generation: str, expected: str | None) -> None:
    assert normalize_number(extract_answer(generation, PATTERN)) == expected


def test_fallback_none_refuses_unmarked_answers() -> None:
    assert extract_answer("12+3=15", PATTERN, fallback="none") is None


def test_unknown_fallback_is_rejected() -> None:
    with pytest.raises(ValueError, match="fallback='bogus'"):
        extract_answer("x", PATTERN, fallback="bogus")


def test_gsm8k_gold_answers_are_read_after_the_hashes() -> None:
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert normalize_number(extract_answer(gold, r"####\s*(.+)$", fallback="none")) == "72"


@pytest.mark.parametrize(("raw", "expected"), [("$5.", "5"), ("-0", "0"), ("1,000,000", "1000000"), (None, None)])
def test_number_normalisation(raw: str | None, expected: str | None) -> None:
    assert normalize_number(raw) == expected


def test_text_normalisation() -> None:
    assert normalize_text("  Answer1. ") == "answer1"

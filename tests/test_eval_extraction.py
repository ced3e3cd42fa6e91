"""Golden answer-extraction cases per suite, scored through the shipped suite configs (conf/eval/*.yaml).

Each case is a hand-written model output in the answer format the protocol's training data teaches — MetaMath's
"The answer is: X", LLM-Adapters' "the correct answer is <keyword>", a fenced Python block — and covers a
correct answer, a wrong one, a malformed one and several candidates. A change to a pattern, an occurrence
rule, a normaliser or the comparison in the YAML or the code shows up here as a changed verdict.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import compose
from loralab.data.code import humaneval_records, mbpp_records
from loralab.data.mathqa import math_records
from loralab.evaluation.checks import check_suite
from loralab.evaluation.extraction import (
    extract_code,
    last_boxed,
    normalize_math_answer,
    normalize_metamath_number,
    truncate_at_stop,
)
from loralab.evaluation.math_equiv import math_equal

DATA = Path(__file__).parent / "fixtures" / "data"


def _task(suite_overrides: tuple[str, ...], name: str):
    """The suite's task as its type (generate, code) reads it."""
    return next(t for t in check_suite(compose(*suite_overrides).eval) if t.name == name)


def _verdicts(task, records, generations):
    samples, extras = task.score(records, [""] * len(records), generations)
    return [s["correct"] for s in samples], [s["extracted"] for s in samples], samples, extras


# ---------------------------------------------------------------------------------------------- GSM8K
GSM8K_GOLD = {"answer": "Gus saves 3*6=<<3*6=18>>18 coins.\n#### 18"}
GSM8K_CASES = [
    ("3 coins a week for 6 weeks: 3*6=18. The answer is: 18", "18", True),       # correct, canonical
    ("3*6=18 coins. The answer is: 18.", "18", True),                           # trailing period
    ("He saves 3+6=9. The answer is: 9", "9", False),                           # wrong
    ("3*6=18 coins in total.", None, False),                                    # malformed: no marker, no credit
    ("The answer is: 12\nWait, 3*6=18. The answer is: 18", "18", True),          # several markers: the LAST counts
    ("The answer is: 18\nOn reflection 3*7=21. The answer is: 21", "21", False),  # ... also when it is wrong
    ("The answer is: 1,8", "18", True),                                         # separators dropped
    ("The answer is: 35/2", "18", True),                                        # a/b divided, rounded (MetaMath)
    ("The answer is: eighteen", None, False),                                   # marker without a number
    ("The answer is 18", None, False),                                          # marker without its colon
]


@pytest.mark.parametrize(("generation", "extracted", "correct"), GSM8K_CASES)
def test_gsm8k_metamath_protocol(generation: str, extracted: str | None, correct: bool) -> None:
    task = _task(("dataset=metamathqa",), "gsm8k")
    verdicts, answers, samples, _ = _verdicts(task, [GSM8K_GOLD], [generation])
    assert samples[0]["gold"] == "18"
    assert (answers[0], verdicts[0]) == (extracted, correct)


def test_gsm8k_prompt_is_the_training_prompt_plus_metamaths_cue() -> None:
    cfg = compose("dataset=metamathqa")
    task = _task(("dataset=metamathqa",), "gsm8k")
    prompt = task.prompt({"query": "How many?"})
    assert prompt == cfg.dataset.prompt_template.format(query="How many?") + " Let's think step by step."


def test_gsm8k_stop_strings_cut_a_runaway_generation() -> None:
    task = _task(("dataset=metamathqa",), "gsm8k")
    text = truncate_at_stop("2*9=18. The answer is: 18\n\n### Instruction:\nThe answer is: 5", task.stop)
    assert _verdicts(task, [GSM8K_GOLD], [text])[0] == [True]


@pytest.mark.parametrize(("raw", "expected"), [("-4.", "-4"), ("+7", "7"), ("2.5", "2"), ("3.5", "4"),
                                               ("1/0", "1"), ("$1,234,567 total", "1234"), (None, None)])
def test_metamath_number_reading(raw: str | None, expected: str | None) -> None:
    # round-half-even, as Python's round() in MetaMath's scorer; one separator at most, a zero denominator
    # reads as the numerator (eval_gsm8k.py; more cases in test_eval_references.py)
    assert normalize_metamath_number(raw) == expected


# ----------------------------------------------------------------------------------------------- MATH
def _math_records() -> list[dict]:
    return math_records(path=str(DATA / "math.jsonl"))  # golds: \frac{5}{6}, 4, 5\sqrt{2}, (2,1)


MATH_CASES = [  # (row, generation, verdict under is_equiv (paper), verdict under math-verify (corrected))
    (0, "Sum is 5/6. The answer is: \\frac{5}{6}", True, True),                  # correct, same form
    (0, "The answer is: \\dfrac{5}{6}.", True, True),                            # other LaTeX spelling
    (0, "The answer is: 10/12", False, True),                                     # equivalent, not equal text
    (0, "The answer is: 0.8333", False, False),                                   # close but not equal
    (1, "x=4, so the answer is 4", False, False),                                 # malformed: no marker
    (1, "The answer is: 3\nCheck: 2*4+3=11. The answer is: 4", True, True),      # the last marker counts
    (1, "The answer is: $4$", False, True),                                       # MetaMath keeps the $
    (1, "The answer is: 4.\nNote that 7 is not a solution.", True, True),        # cut at the first ".\n"
    (2, "The answer is: \\sqrt{50}", False, True),                                # unsimplified but equal
    (2, "The answer is: 5\\sqrt{3}", False, False),                               # wrong radicand
    (3, "The answer is: (2, 1)", True, True),                                     # tuple, other spacing
    (3, "The answer is: (1,2)", False, False),                                    # order matters
]


@pytest.mark.parametrize(("row", "generation", "paper", "corrected"), MATH_CASES)
def test_math_metamath_protocol_and_its_math_verify_variant(row: int, generation: str, paper: bool,
                                                             corrected: bool) -> None:
    task = _task(("dataset=metamathqa",), "math")
    assert task.cfg.compare == "is_equiv"
    assert _verdicts(task, [_math_records()[row]], [generation])[0] == [paper]
    variant = _task(("dataset=metamathqa", "eval=metamathqa_mathverify"), "math")
    verdicts, _, samples, extras = _verdicts(variant, [_math_records()[row]], [generation])
    assert verdicts == [corrected] and samples[0]["comparison"] == "math_verify"
    assert extras["string_fallback"] == 0


def test_math_verify_variant_records_its_string_fallback() -> None:
    variant = _task(("dataset=metamathqa", "eval=metamathqa_mathverify"), "math")
    verdicts, _, samples, extras = _verdicts(variant, [_math_records()[1]], ["The answer is: \\frac{"])
    assert verdicts == [False] and samples[0]["comparison"] == "string" and extras["string_fallback"] == 1


def test_math_gold_is_the_last_box_with_nested_braces() -> None:
    assert [r["answer"] for r in _math_records()] == ["\\frac{5}{6}", "4", "5\\sqrt{2}", "(2,1)"]
    assert last_boxed("first \\boxed{1}, then \\boxed{\\frac{1}{\\sqrt{2}}}.") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("no box here") is None and last_boxed("\\boxed{unclosed") is None


def test_math_string_fallback_still_needs_equal_text() -> None:
    assert math_equal("\\frac{", "\\frac{") == (True, "string")
    assert math_equal("\\frac{", "\\frac{1}{2}") == (False, "string")
    assert math_equal(None, "4") == (False, "math_verify")
    assert normalize_math_answer("  $\\frac{1}{2}$. ") == "\\frac{1}{2}"


# ---------------------------------------------------------------------------------------- commonsense
COMMONSENSE = {  # task → (gold keyword, a wrong keyword of the same task)
    "boolq": ("true", "false"), "piqa": ("solution2", "solution1"), "siqa": ("answer3", "answer1"),
    "hellaswag": ("ending4", "ending2"), "winogrande": ("option1", "option2"), "arc_e": ("answer2", "answer4"),
    "arc_c": ("answer5", "answer1"), "obqa": ("answer1", "answer3"),
}


@pytest.mark.parametrize("name", sorted(COMMONSENSE))
def test_commonsense_llm_adapters_first_keyword(name: str) -> None:
    task = _task(("dataset=commonsense170k",), name)
    gold, wrong = COMMONSENSE[name]
    record = {"answer": gold}
    cases = [
        (f"the correct answer is {gold}", True),                       # LLM-Adapters' output format
        (f"the correct answer is {wrong}", False),                     # wrong keyword
        (f"{gold}", True),                                             # bare keyword
        (f"the correct answer is {wrong} or maybe {gold}", False),     # several candidates: the FIRST counts
        (f"I think {gold}, not {wrong}", True),
        (f"the correct answer is {gold.upper()}", False),              # case-sensitive, as the reference
        ("the correct answer is unclear", False),                      # malformed: no keyword
    ]
    verdicts, _, samples, extras = _verdicts(task, [record] * len(cases), [g for g, _ in cases])
    assert verdicts == [c for _, c in cases]
    assert extras["unanswered"] == 2 and samples[-1]["extracted"] is None


def test_commonsense_prompt_is_the_alpaca_layout_around_the_instruction() -> None:
    task = _task(("dataset=commonsense170k",), "boolq")
    prompt = task.prompt({"instruction": "Q?", "input": ""})
    assert prompt.endswith("### Instruction:\n                Q?\n\n                ### Response:\n                ")
    assert "paired with an input" not in prompt
    with_input = task.prompt({"instruction": "Q?", "input": "ctx"})
    assert "paired with an input" in with_input
    assert "### Input:\n                ctx\n\n                ### Response:\n                " in with_input


# ----------------------------------------------------------------------------------------------- code
def test_code_extraction_rules() -> None:
    fenced = "Here you go:\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(fenced) == ("def f():\n    return 1\n", "fenced")
    two = "```python\nA = 1\n```\nand also\n```python\nB = 2\n```"
    assert extract_code(two)[0] == "A = 1\n"                                   # several blocks: the first
    assert extract_code("```bash\nls\n```\n```\nx = 3\n```")[0] == "x = 3\n"  # non-Python blocks skipped
    assert extract_code("```python\ndef g():\n    return")[0] == "def g():\n    return\n"  # cut by the limit
    assert extract_code("    return x\n") == ("    return x\n", "raw")      # a body continuation has no fence


MBPP_GENERATIONS = {  # fixture rows 8001..8003
    "8001": ("Sure.\n```python\ndef add_two(a, b):\n    return a + b\n```", True),            # correct
    "8002": ("```python\ndef count_vowels(s):\n    return sum(c in 'aeiou' for c in s)\n```", False),  # wrong
    "8003": ("You can use the built-in max function on the list.", False),                 # malformed: prose
}


def test_mbpp_pass_at_1_through_the_sandbox() -> None:
    task = _task(("dataset=code_feedback", "eval.allow_code_execution=true"), "mbpp")
    rows = mbpp_records(path=str(DATA / "mbpp.jsonl"))
    generations = [MBPP_GENERATIONS[str(r["task_id"])][0] for r in rows]
    samples, extras = task.score(rows, [task.prompt(r) for r in rows], generations)
    assert [s["correct"] for s in samples] == [MBPP_GENERATIONS[str(r["task_id"])][1] for r in rows]
    assert [s["verdict"] for s in samples] == ["passed", "failed", "failed"]
    assert extras["allow_code_execution"] is True and extras["n_passed"] == 1
    assert "assert add_two(1, 2) == 3" in task.prompt(rows[0])  # the prompt shows the tests


def test_humaneval_full_definitions_and_body_continuations_both_run() -> None:
    task = _task(("dataset=code_feedback", "eval.allow_code_execution=true"), "humaneval")
    rows = humaneval_records(path=str(DATA / "humaneval.jsonl"))  # double(x), total(values)
    generations = [
        "```python\ndef double(x: int) -> int:\n    return x + x\n```",   # full definition after the prompt
        "    return sum(values)\n",                                           # continuation of the prompt's body
    ]
    samples, _ = task.score(rows, [""] * 2, generations)
    assert [s["correct"] for s in samples] == [True, True]
    wrong = ["```python\ndef double(x):\n    return x * x\n```", "```python\nprint('no function')\n```"]
    samples, _ = task.score(rows, [""] * 2, wrong)
    assert [s["correct"] for s in samples] == [False, False]
    prompt = task.prompt(rows[0])
    assert "Create a Python script for this problem:\ndef double" in prompt and prompt.endswith("### Response:")

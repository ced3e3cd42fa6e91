"""Per-sample records of every generative fixture suite, against the records the scorer gave before answer
readings became filter chains and task types became classes (``tests/fixtures/golden/scored_samples.json``).

Each generative task of the shipped suites scores its fixture rows against a fixed set of generations — the
answer formats the protocols teach, the readings' quirks (several markers, separators, fractions, MetaMath's
".\\n" cut, keywords in other cases, no marker at all) and each row's own reference answer written the way a
model would — and every prompt, extracted answer, reference, verdict (and MATH comparison), every exported
harness target and every exported filter list must equal the stored ones. The stored file was written by the
code before the change; a change to what any suite measures shows up here as a changed record.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import compose

DATA = Path(__file__).parent / "fixtures" / "data"
GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "scored_samples.json"
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
METAMATH = ["dataset=metamathqa", f"eval.tasks.0.data.path={DATA / 'gsm8k.jsonl'}",
            f"eval.tasks.1.data.path={DATA / 'math.jsonl'}"]
SUITES: dict[str, list[str]] = {
    "arith_shift": ["eval.tasks.0.data.n=6"],
    "metamathqa": METAMATH,
    "metamathqa_mathverify": [*METAMATH, "eval=metamathqa_mathverify"],
    "commonsense170k": ["dataset=commonsense170k",
                        *[f"eval.tasks.{i}.data.path={DATA / t}.jsonl" for i, t in enumerate(COMMONSENSE)]],
}
NUMBERS = ["The answer is: 18", "3*6=18. The answer is: 18.", "The answer is 18", "so 7+11=18 in all",
           "The answer is: 12\nWait. The answer is: 2400", "The answer is: 1,234,567", "The answer is: $1,234.56",
           "The answer is: 35/2", "The answer is: 7/0", "The answer is: -4.50", "The answer is: eighteen",
           "The answer is: 9\n\n### Instruction:\nThe answer is: 5", "no number at all", ""]
MATH = ["The answer is: \\frac{5}{6}", "The answer is: \\dfrac{5}{6}.", "The answer is: 10/12",
        "The answer is: 4.\nNote that 7 is not a solution.", "The answer is: $4$", "The answer is: \\sqrt{50}",
        "The answer is: (2, 1)", "The answer is: 3\nCheck. The answer is: 4", "The answer is: \\frac{",
        "x=4, so the answer is 4", "The answer is: \\frac12..\n "]
KEYWORDS = ["the correct answer is true", "the correct answer is false", "solution2", "answer3 or answer1",
            "I think ending4, not ending2", "the correct answer is OPTION1", "option2", "answer5",
            "the correct answer is unclear", ""]


def _reference(task: Any, record: dict[str, Any]) -> str:
    """The row's reference answer as a model would write it (the text after GSM8K's "####")."""
    return str(record[task.answer_field]).split("####")[-1].strip()


def generations(task: Any, records: list[dict[str, Any]]) -> list[str]:
    """The generations every row of ``task`` is scored against."""
    if task.name in COMMONSENSE:
        fixed = KEYWORDS
        own = [f"the correct answer is {_reference(task, r)}" for r in records]
    else:
        fixed = MATH if task.name == "math" else NUMBERS
        own = [f"The answer is: {_reference(task, r)}" for r in records]
        own += [f"The answer is: {_reference(task, r)}.\nThe end." for r in records]
    return [*fixed, *own]


def cases() -> dict[str, tuple[Any, Any, list[dict[str, Any]]]]:
    """``suite/task`` → (the task's config, its suite's config, the task's fixture rows)."""
    from loralab.evaluation.evaluator import load_suite_records

    out = {}
    for suite_name, overrides in SUITES.items():
        suite = compose(*overrides).eval
        records = load_suite_records(suite)
        for task in suite.tasks:
            out[f"{suite_name}/{task.name}"] = (task, suite, list(records[task.name]))
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _scored(typed: Any, task: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the task makes of its rows: prompts, exported harness targets and filters, and each (row,
    generation)'s sample without the prompt and generation (both follow from the rows and :func:`generations`)."""
    texts = generations(task, records)
    rows = [r for r in records for _ in texts]
    samples, extras = typed.score(rows, [""] * len(rows), texts * len(records))
    return {"prompts": [typed.prompt(r) for r in records], "harness_targets": typed.harness_targets(records),
            "filter_list": typed.harness_reading().filter_list(), "extras": extras,
            "samples": [{k: v for k, v in s.items() if k not in ("prompt", "generation")} for s in samples]}


def test_every_generative_fixture_suite_scores_as_before(golden: dict[str, Any]) -> None:
    from loralab.evaluation.checks import check_suite

    now = {}
    for key, (task, suite, records) in cases().items():
        typed = next(t for t in check_suite(suite) if t.name == task.name)
        now[key] = _scored(typed, task, records)
    assert sorted(now) == sorted(golden)
    for key in golden:
        for part in ("prompts", "harness_targets", "filter_list", "extras"):
            assert now[key][part] == golden[key][part], (key, part)
        assert len(now[key]["samples"]) == len(golden[key]["samples"]) > 0, key
        for i, (new, old) in enumerate(zip(now[key]["samples"], golden[key]["samples"])):
            assert new == old, (key, i, generations(*cases()[key][::2])[i % len(generations(*cases()[key][::2]))])
    verdicts = [s["correct"] for v in now.values() for s in v["samples"]]
    assert any(verdicts) and not all(verdicts)

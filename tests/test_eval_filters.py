"""Answer filters one by one, the chain a suite YAML declares, and the same chain as lm-evaluation-harness
filters (the harness' own ``regex`` filter where it reads what loralab reads)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose
from loralab.errors import ConfigError
from loralab.evaluation.checks import check_suite
from loralab.evaluation.filters import FILTERS, FilterChain, NormalizeFilter, RegexFilter, parse_chain
from loralab.evaluation.lm_eval_filters import INVALID, SETTINGS_FILE, HarnessReading, task_hooks

MARKER = "The answer is: (.*)"


@pytest.mark.parametrize(("text", "occurrence", "fallback", "expected"), [
    ("The answer is: 3\nThe answer is: 8", "first", "none", "3"),
    ("The answer is: 3\nThe answer is: 8", "last", "none", "8"),
    ("x The answer is:  8 ", "last", "none", "8"),                        # group 1, stripped
    ("12+3=15, so 15 apples", "first", "none", None),                     # no marker, no answer
    ("12+3=15, so 15 apples", "first", "last_number", "15"),              # ... or the last number
    ("no number", "first", "last_number", None),
    (None, "first", "last_number", None),                                 # no answer stays none
])
def test_regex_filter(text: str | None, occurrence: str, fallback: str, expected: str | None) -> None:
    assert RegexFilter(MARKER, fallback, occurrence)(text) == expected


def test_regex_filter_reads_what_the_harness_regex_filter_reads() -> None:
    """lm-eval's own ``regex`` filter (findall, ``group_select`` 0/-1, strip, fallback) gives the same answers
    for a one-group pattern without fallback."""
    from lm_eval.filters.extraction import RegexFilter as HarnessRegex

    pattern = r"(?s)The answer is: ((?:(?!The answer is: ).)*)"
    texts = ["The answer is: 3. The answer is:  8 \n", "none here", "The answer is: 1,234", "The answer is: "]
    for occurrence, select in (("first", 0), ("last", -1)):
        ours = [RegexFilter(pattern, "none", occurrence)(t) for t in texts]
        harness = HarnessRegex(regex_pattern=pattern, group_select=select, fallback=INVALID).apply([[t] for t in texts],
                                                                                                  [{}] * len(texts))
        assert [INVALID if o is None else o for o in ours] == [h[0] for h in harness]


@pytest.mark.parametrize(("how", "text", "expected"), [
    ("number", "1,234.50 dollars", "1234.5"), ("metamath_number", "1,234,567", "1234"),
    ("exact_number", "2.50", "5/2"), ("strip", "  option1 ", "option1"), ("text", " Answer1. ", "answer1"),
    ("metamath_math", " \\frac12. ", "\\frac12"), ("math", "$4$.", "4"), ("number", None, None),
])
def test_normalize_filter(how: str, text: str | None, expected: str | None) -> None:
    assert NormalizeFilter(how)(text) == expected


def test_a_chain_applies_its_steps_in_order() -> None:
    chain = parse_chain([{"function": "regex", "pattern": MARKER, "occurrence": "last", "fallback": "none"},
                         {"function": "normalize", "how": "metamath_number"}], "t")
    assert chain("The answer is: 4\nThe answer is: 1,234,567 apples") == "1234"
    assert chain("4 apples") is None
    assert [s.name for s in chain] == ["regex", "normalize"] and len(chain.normalizers()) == 1
    assert chain.specs()[0] == {"function": "regex", "pattern": MARKER, "fallback": "none", "occurrence": "last"}
    assert set(FILTERS) == {"regex", "normalize"}


@pytest.mark.parametrize(("specs", "phrase"), [
    ([], "non-empty list"),
    ([{"function": "lowercase"}], r"t\[0\]: function='lowercase'; valid filters: \['normalize', 'regex'\]"),
    ([{"function": "regex", "pattern": MARKER}], r"t\[0\]: filter regex lacks \['fallback'\]"),
    ([{"function": "regex", "pattern": MARKER, "fallback": "none", "occurence": "last"}],
     r"filter regex has no parameter \['occurence'\]; its parameters: \['fallback', 'occurrence', 'pattern'\]"),
    ([{"function": "regex", "pattern": MARKER, "fallback": "zero"}],
     r"fallback='zero'; valid: \['last_number', 'none'\]"),
    ([{"function": "regex", "pattern": MARKER, "fallback": "none", "occurrence": "middle"}], "occurrence='middle'"),
    ([{"function": "regex", "pattern": "The answer is: .*", "fallback": "none"}], "has no group"),
    ([{"function": "regex", "pattern": "(unclosed", "fallback": "none"}], "not a regular expression"),
    ([{"function": "regex", "pattern": MARKER, "fallback": "none"}, {"function": "normalize", "how": "fuzzy"}],
     r"t\[1\]: how='fuzzy'; valid: \[.*'metamath_number'"),
    (["regex"], "is not a filter step"),
])
def test_bad_chains_name_the_step_and_the_valid_values(specs: list, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        parse_chain(specs, "t")


def test_suite_chains_are_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"eval task gsm8k: filters\[1\]: how='fuzzy'"):
        check_suite(compose("dataset=metamathqa", "eval.tasks.0.filters.1.how=fuzzy").eval)
    with pytest.raises(ConfigError, match=r"eval task math: filters\[0\]: occurrence='middle'"):
        check_suite(compose("dataset=metamathqa", "eval.tasks.1.filters.0.occurrence=middle").eval)


def test_harness_filter_list_is_made_from_the_chain() -> None:
    regex = {"function": "regex", "pattern": MARKER, "occurrence": "last", "fallback": "none"}
    strip = HarnessReading(parse_chain([regex, {"function": "normalize", "how": "strip"}], "t"), "exact")
    (ensemble,) = strip.filter_list()
    assert ensemble["filter"] == [{"function": "regex", "regex_pattern": MARKER, "group_select": -1,
                                   "fallback": INVALID}, {"function": "take_first"}]  # the regex strips already
    assert not strip.needs_hooks()
    number = HarnessReading(parse_chain([regex, {"function": "normalize", "how": "number"}], "t"), "exact")
    assert [s["function"] for s in number.filter_list()[0]["filter"]] == ["regex", "custom", "take_first"]
    falls_back = HarnessReading(parse_chain([{**regex, "fallback": "last_number"}], "t"), "exact")
    assert [s["function"] for s in falls_back.filter_list()[0]["filter"]] == ["custom", "take_first"]
    assert falls_back.needs_hooks()


def test_hooks_run_the_chain_from_either_settings_format(tmp_path: Path) -> None:
    """The hooks of an export read ``answer_filter.json``: the chain, or the flat keys older exports wrote."""
    chain = FilterChain((RegexFilter(MARKER, "last_number"), NormalizeFilter("number")))
    HarnessReading(chain, "exact").write_hooks(tmp_path)
    extract, normalize, _ = task_hooks(str(tmp_path / "loralab_answer.py"))
    responses = [["The answer is: 1,200."], ["so 7 then 9"], ["nothing"]]
    assert extract(responses, None) == [["1200"], ["9"], [INVALID]]
    assert normalize([["1,200."], [INVALID]], None) == [["1200"], [INVALID]]
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"answer_pattern": MARKER, "occurrence": "first",
                                                      "fallback": "last_number", "normalizer": "number",
                                                      "compare": "exact"}))
    old_extract, _, _ = task_hooks(str(tmp_path / "loralab_answer.py"))
    assert old_extract(responses, None) == extract(responses, None)

"""HumanEval / MBPP program assembly and sandboxed pass@1 scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import compose
from loralab.errors import ConfigError
from loralab.evaluation import code_exec, sandbox
from loralab.evaluation.code_exec import (
    humaneval_program,
    load_humaneval_problems,
    load_mbpp_rows,
    mbpp_program,
    pass_at_1,
    score_humaneval,
    score_mbpp,
)
from loralab.evaluation.sandbox import ENV_VAR, SandboxUnavailable, detect_isolation
from loralab.runner import run

MBPP_ROWS = Path(__file__).parent / "fixtures" / "mbpp" / "rows.jsonl"
DATA = Path(__file__).parent / "fixtures" / "data"
# Plausible but wrong solutions to the fixture rows: each breaks at least one of the row's asserts.
MBPP_WRONG = {
    "9001": "def digit_sum(n):\n    return len(str(n))",
    "9002": "def is_mirror_word(s):\n    return s == s[::-1]",  # forgets to ignore case
    "9003": "def disc_area(r):\n    return 3.14 * r * r",
    "9004": "def kth_smallest(items, k):\n    return sorted(items)[k]",  # off by one
}
WORKERS = 4  # each worker only waits on a child process


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return load_humaneval_problems()


def test_scoring_refuses_without_opt_in(monkeypatch: pytest.MonkeyPatch, problems: dict[str, dict]) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("code was executed without opt-in")

    monkeypatch.setattr(code_exec, "run_programs", must_not_run)
    rows = load_mbpp_rows(MBPP_ROWS)
    for call in (lambda flag: score_humaneval({}, allow_code_execution=flag),
                 lambda flag: score_mbpp(rows, {}, allow_code_execution=flag)):
        for flag in (False, "true", 1):  # only the boolean True opts in
            with pytest.raises(ConfigError, match=r"eval\.allow_code_execution=true"):
                call(flag)


def test_where_nothing_isolates_code_is_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("code was executed without isolation")

    monkeypatch.setattr(code_exec, "run_programs", must_not_run)
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare(1): neither namespaces nor userns can work
    sandbox._detect.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=f"set {ENV_VAR}=plain"):
            score_mbpp(load_mbpp_rows(MBPP_ROWS), {}, allow_code_execution=True)
        results = tmp_path / "results"
        cfg = compose("dataset=code_feedback", f"dataset.train.path={DATA / 'code_feedback.jsonl'}",
                      "eval.allow_code_execution=true", "trainer.max_steps=2", runs_dir=results)
        with pytest.raises(SandboxUnavailable, match=f"set {ENV_VAR}=plain"):
            run(cfg)  # refused by the suite checks, before training
        assert not (results / "runs").exists()
    finally:
        sandbox._detect.cache_clear()


def test_pass_at_1_is_the_mean_with_its_standard_error() -> None:
    p, se = pass_at_1([True, False, True, True])
    assert p == 0.75 and se == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert pass_at_1([True] * 5) == (1.0, 0.0)
    with pytest.raises(ValueError):
        pass_at_1([])


def test_humaneval_program_is_prompt_completion_test_then_check(problems: dict[str, dict]) -> None:
    problem = problems["HumanEval/0"]
    program = humaneval_program(problem, "    return False\n")
    assert program.startswith(problem["prompt"] + "    return False\n")
    assert problem["test"] in program
    assert program.rstrip().endswith(f"check({problem['entry_point']})")


def test_humaneval_canonical_solutions_all_pass_and_broken_ones_all_fail(problems: dict[str, dict]) -> None:
    assert len(problems) == 164
    canonical = {tid: p["canonical_solution"] for tid, p in problems.items()}
    good = score_humaneval(canonical, allow_code_execution=True, workers=WORKERS)
    assert (good.n, good.n_passed, good.pass_at_1, good.stderr) == (164, 164, 1.0, 0.0)
    assert good.allow_code_execution is True and good.isolation == detect_isolation().mode != "plain"
    assert {v.isolation for v in good.verdicts.values()} == {good.isolation}  # in every verdict too
    json.dumps(good.to_dict())  # the result record must be serialisable as-is

    # Half the completions return None, half raise: neither may pass a single problem.
    broken = {tid: ("    return None\n" if i % 2 else "    raise NotImplementedError\n")
              for i, tid in enumerate(problems)}
    bad = score_humaneval(broken, allow_code_execution=True, workers=WORKERS)
    assert (bad.n, bad.n_passed, bad.pass_at_1) == (164, 0, 0.0)
    assert {v.status for v in bad.verdicts.values()} == {"failed"}


def test_humaneval_partial_set_counts_missing_completions_as_failures(problems: dict[str, dict]) -> None:
    subset = {tid: problems[tid] for tid in ("HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3")}
    completions = {"HumanEval/0": subset["HumanEval/0"]["canonical_solution"],
                   "HumanEval/1": subset["HumanEval/1"]["canonical_solution"],
                   "HumanEval/2": "    return -1.0\n"}
    result = score_humaneval(completions, allow_code_execution=True, problems=subset, workers=WORKERS)
    assert (result.n, result.n_passed) == (4, 2)
    assert result.pass_at_1 == 0.5 and result.stderr == pytest.approx(math.sqrt(0.25 / 3))
    assert result.verdicts["HumanEval/2"].status == "failed"
    assert result.verdicts["HumanEval/3"].reason == "no completion generated"
    with pytest.raises(ConfigError, match="unknown HumanEval task ids"):
        score_humaneval({"HumanEval/999": "pass"}, allow_code_execution=True, problems=subset)


def test_mbpp_program_puts_setup_before_code_before_asserts() -> None:
    row = {r["task_id"]: r for r in load_mbpp_rows(MBPP_ROWS)}
    with_setup = mbpp_program(row[9003], row[9003]["code"])
    setup_at, code_at = with_setup.index("from math import isclose"), with_setup.index("def disc_area")
    assert setup_at < code_at < min(with_setup.index(t) for t in row[9003]["test_list"])
    plain, challenge = mbpp_program(row[9004], "X"), mbpp_program(row[9004], "X", include_challenge=True)
    assert all(t not in plain and t in challenge for t in row[9004]["challenge_test_list"])


def test_mbpp_correct_solutions_pass_and_wrong_ones_fail() -> None:
    rows = load_mbpp_rows(MBPP_ROWS)
    assert {"task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"} <= set(rows[0])
    right = score_mbpp(rows, {str(r["task_id"]): r["code"] for r in rows}, allow_code_execution=True,
                       include_challenge=True, workers=WORKERS)
    assert (right.n, right.n_passed, right.pass_at_1) == (4, 4, 1.0) and right.allow_code_execution
    wrong = score_mbpp(rows, MBPP_WRONG, allow_code_execution=True, workers=WORKERS)
    assert (wrong.n, wrong.n_passed) == (4, 0)
    assert all("AssertionError" in v.reason for v in wrong.verdicts.values())
    # Right on the base tests, wrong on long inputs: only the challenge tests catch it.
    short_only = {"9004": "def kth_smallest(items, k):\n    return sorted(items[:10])[k - 1]"}
    base = score_mbpp(rows[3:], short_only, allow_code_execution=True)
    hard = score_mbpp(rows[3:], short_only, allow_code_execution=True, include_challenge=True)
    assert (base.n_passed, hard.n_passed) == (1, 0)

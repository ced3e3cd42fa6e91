"""Code-generation scoring (greedy pass@1) for HumanEval and MBPP by executing programs in the sandbox.

A "program" is the model's code plus the benchmark's tests; it passes iff it runs to the end without raising.
Model-written code is executed only after an explicit opt-in (``eval.allow_code_execution=true``), only
through :mod:`loralab.evaluation.sandbox`, never in this process, and only where the sandbox can isolate it
(or ``LORALAB_SANDBOX=plain`` says to run it anyway); both are checked before anything is trained. The
isolation mode is recorded in the result and in every verdict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from loralab.data.code import load_humaneval_problems
from loralab.errors import ConfigError
from loralab.evaluation.sandbox import SandboxLimits, Verdict, detect_isolation, run_programs

OPT_IN_KEY = "eval.allow_code_execution"


@dataclass(frozen=True)
class CodeEvalResult:
    """Scores of one suite plus the per-task verdicts and how the code was contained."""

    suite: str
    n: int
    n_passed: int
    pass_at_1: float
    stderr: float
    allow_code_execution: bool
    isolation: str
    isolation_note: str
    verdicts: dict[str, Verdict] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("suite", "n", "n_passed", "pass_at_1", "stderr",
                                             "allow_code_execution", "isolation", "isolation_note")}
        out["verdicts"] = {tid: v.to_dict() for tid, v in self.verdicts.items()}
        return out


def require_opt_in(allow_code_execution: bool) -> None:
    """Refuse to run model-written code unless the user said so explicitly, and unless the sandbox can
    isolate it here (:class:`~loralab.evaluation.sandbox.SandboxUnavailable` names the second opt-in)."""
    if allow_code_execution is not True:
        raise ConfigError(
            "code-generation scoring executes model-written code; it runs only in a sandbox and only if you "
            f"opt in: set {OPT_IN_KEY}=true"
        )
    detect_isolation()


def pass_at_1(outcomes: Sequence[bool]) -> tuple[float, float]:
    """Greedy pass@1 (mean of per-problem pass/fail) and its standard error (sample std / sqrt(n))."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("pass@1 of zero problems is undefined")
    p = sum(bool(o) for o in outcomes) / n
    se = math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")
    return p, se


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """prompt + completion defines the function; the test defines check(); calling it runs the asserts."""
    return (f"{problem['prompt']}{completion}\n\n\n{problem['test']}\n\n\n"
            f"check({problem['entry_point']})\n")


def load_mbpp_rows(path: str | Path) -> list[dict[str, Any]]:
    """MBPP rows (task_id, text, code, test_list, test_setup_code, challenge_test_list) from a .jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mbpp_program(row: Mapping[str, Any], code: str, include_challenge: bool = False) -> str:
    """Setup code first (tests may rely on its imports), then the model's code, then the assert lines."""
    tests = list(row["test_list"]) + (list(row.get("challenge_test_list") or []) if include_challenge else [])
    return f"{row.get('test_setup_code') or ''}\n{code}\n\n" + "\n".join(tests) + "\n"


def _score(suite: str, programs: Mapping[str, str | None], allow_code_execution: bool,
           limits: SandboxLimits | None, workers: int) -> CodeEvalResult:
    require_opt_in(allow_code_execution)
    isolation = detect_isolation()
    runnable = {tid: src for tid, src in programs.items() if src is not None}
    ran = dict(zip(runnable, run_programs(list(runnable.values()), limits, workers=workers)))
    # A problem without a completion counts as failed: pass@1 is over the whole problem set.
    verdicts = {tid: ran.get(tid) or Verdict("failed", "no completion generated") for tid in programs}
    p, se = pass_at_1([v.passed for v in verdicts.values()])
    return CodeEvalResult(suite=suite, n=len(verdicts), n_passed=sum(v.passed for v in verdicts.values()),
                          pass_at_1=p, stderr=se, allow_code_execution=True, isolation=isolation.mode,
                          isolation_note=isolation.note, verdicts=verdicts)


def score_humaneval(completions: Mapping[str, str], *, allow_code_execution: bool,
                    problems: Mapping[str, Mapping[str, Any]] | None = None,
                    limits: SandboxLimits | None = None, workers: int = 2) -> CodeEvalResult:
    """pass@1 over `problems` (default: all 164) given one greedy completion per task_id."""
    require_opt_in(allow_code_execution)
    problems = problems if problems is not None else load_humaneval_problems()
    unknown = sorted(set(completions) - set(problems))
    if unknown:
        raise ConfigError(f"completions for unknown HumanEval task ids: {unknown[:5]}")
    programs = {tid: humaneval_program(prob, completions[tid]) if tid in completions else None
                for tid, prob in problems.items()}
    return _score("humaneval", programs, allow_code_execution, limits, workers)


def score_mbpp(rows: Iterable[Mapping[str, Any]], completions: Mapping[str, str], *, allow_code_execution: bool,
               include_challenge: bool = False, limits: SandboxLimits | None = None,
               workers: int = 2) -> CodeEvalResult:
    """pass@1 over MBPP `rows`; `completions` maps str(task_id) to the model's full code for that task."""
    require_opt_in(allow_code_execution)
    rows = list(rows)
    known = {str(r["task_id"]) for r in rows}
    unknown = sorted(set(map(str, completions)) - known)
    if unknown:
        raise ConfigError(f"completions for unknown MBPP task ids: {unknown[:5]}")
    by_id = {str(k): v for k, v in completions.items()}
    programs = {str(r["task_id"]): mbpp_program(r, by_id[str(r["task_id"])], include_challenge)
                if str(r["task_id"]) in by_id else None for r in rows}
    return _score("mbpp", programs, allow_code_execution, limits, workers)

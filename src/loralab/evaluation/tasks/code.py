"""``type: code`` — generated code run with the benchmark's tests in the sandbox, pass@1.

Fields (beside the decoding ones of :class:`~loralab.evaluation.tasks.generative.GenerativeTask`):
``benchmark`` (``humaneval`` | ``mbpp``), ``timeout_s`` (per program, default 10), ``workers`` (programs run at
once, default 2), ``include_challenge`` (MBPP's challenge tests too). The code is the generation's first fenced
Python block, else the whole text (:func:`loralab.evaluation.extraction.extract_code`). Model-written code runs
only under the suite's opt-in ``allow_code_execution: true``, checked before training and again before
generating, so no path runs code without it.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar, Sequence

from omegaconf import DictConfig

from loralab.evaluation.extraction import extract_code
from loralab.evaluation.tasks.base import Records, TaskOutput, choice
from loralab.evaluation.tasks.generative import GenerativeTask

BENCHMARKS = ("humaneval", "mbpp")


def require_code_opt_in(suite: DictConfig) -> None:
    from loralab.evaluation.code_exec import require_opt_in

    require_opt_in(suite.get("allow_code_execution", False))


def _humaneval_completion(record: dict[str, Any], code: str) -> str:
    # A full definition of the entry point follows the prompt as new top-level code (the prompt's imports stay
    # in scope, its docstring-only stub is a valid function that gets redefined); anything else continues
    # the prompt's function body, as a completion model writes it.
    if re.search(rf"^\s*def\s+{re.escape(record['entry_point'])}\s*\(", code, re.M):
        return "\n" + code
    return code


class CodeTask(GenerativeTask):
    type_name: ClassVar[str] = "code"
    required = (*GenerativeTask.required, "benchmark")
    optional = (*GenerativeTask.optional, "timeout_s", "workers", "include_challenge")
    metrics = ("pass@1",)

    def check(self) -> None:
        super().check()
        choice(self.cfg, "benchmark", self.cfg.benchmark, BENCHMARKS)
        require_code_opt_in(self.suite)

    def before_generating(self) -> None:
        require_code_opt_in(self.suite)  # checked before training too; repeated so no path runs code without it

    def score(self, records: Records, prompts: Sequence[str], generations: Sequence[str],
              allow_code_execution: bool = True) -> TaskOutput:
        """Extract each generation's code, run it with the benchmark's tests in the sandbox, one verdict each."""
        from loralab.evaluation.code_exec import score_humaneval, score_mbpp
        from loralab.evaluation.sandbox import SandboxLimits

        task = self.cfg
        limits = SandboxLimits(timeout_s=float(task.get("timeout_s") or 10.0), cpu_s=int(task.get("timeout_s") or 10))
        workers = int(task.get("workers") or 2)
        extracted = [extract_code(g) for g in generations]
        ids = [str(r["task_id"]) for r in records]
        if task.benchmark == "humaneval":
            completions = {tid: _humaneval_completion(r, code) for tid, r, (code, _) in zip(ids, records, extracted)}
            result = score_humaneval(completions, allow_code_execution=allow_code_execution,
                                     problems={tid: r for tid, r in zip(ids, records)}, limits=limits,
                                     workers=workers)
        else:
            completions = {tid: code for tid, (code, _) in zip(ids, extracted)}
            result = score_mbpp(records, completions, allow_code_execution=allow_code_execution,
                                include_challenge=bool(task.get("include_challenge", False)), limits=limits,
                                workers=workers)
        samples = []
        for tid, prompt, generation, (code, how) in zip(ids, prompts, generations, extracted):
            verdict = result.verdicts[tid]
            samples.append({"task_id": tid, "prompt": prompt, "generation": generation, "extracted": code,
                            "extraction": how, "verdict": verdict.status, "reason": verdict.reason,
                            "correct": verdict.passed, "isolation": result.isolation})
        extras = {"allow_code_execution": result.allow_code_execution, "isolation": result.isolation,
                  "isolation_note": result.isolation_note, "n_passed": result.n_passed}
        return samples, extras

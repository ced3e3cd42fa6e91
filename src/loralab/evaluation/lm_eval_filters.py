"""A generative task's answer reading as lm-evaluation-harness filters, so an exported task re-scores a run.

Every ``generate`` task that the harness decodes is written to ``<run>/lm_eval/<task>/`` as a ``generate_until``
task (:mod:`loralab.evaluation.lm_eval_generate`). Its ``filter_list`` reads the answer the way loralab's scorer
does, so the standard CLI gives loralab's number on the same generations::

    lm_eval --model hf --model_args pretrained=<base>,peft=<run>/adapter \\
        --include_path <run>/lm_eval/<task> --tasks loralab_<task>

The chain, with ``doc_to_target`` the reference in the same form:

1. ``regex`` — the harness' own filter with the task's ``answer_pattern`` (``group_select`` 0 for the first
   match, -1 for the last; no match → ``[invalid]``), where the task gives no credit without a match
   (``fallback: none``) and the pattern has one group: the harness then reads exactly what loralab reads.
   A task with ``fallback: last_number`` gets a ``custom`` step (:func:`extract`) instead;
2. ``custom`` (:func:`normalize`) — the task's normaliser (MetaMath's GSM8K number, its MATH cut, ...) and,
   for ``compare: is_equiv``, :func:`loralab.evaluation.math_equiv.equivalence_key`, so that lm-eval's
   ``exact_match`` gives ``is_equiv``'s verdicts; left out where the normaliser is ``strip`` (the regex filter
   strips already);
3. ``take_first``.

``compare: math_verify`` has no such key: its task also names ``process_results`` (:func:`process_results`),
which compares with math-verify. The ``custom`` steps and ``process_results`` come from ``loralab_answer.py``
beside the task YAML, a two-line module that binds this module's functions to ``answer_filter.json`` (the
task's settings); running them needs loralab importable where ``lm_eval`` runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from loralab.evaluation.extraction import NORMALIZERS, extract_answer
from loralab.evaluation.math_equiv import equivalence_key, math_equal

INVALID = "[invalid]"                  # the harness regex filter's no-match value, kept through the chain
NO_REFERENCE = "\n(no reference)"      # a target no filtered answer equals: loralab scores such a row wrong
SETTINGS_FILE = "answer_filter.json"
HOOKS_MODULE = "loralab_answer"
HOOKS_SOURCE = f'''"""lm-eval hooks of this exported task: loralab's answer reading, configured by {SETTINGS_FILE}."""
from loralab.evaluation.lm_eval_filters import task_hooks

extract, normalize, process_results = task_hooks(__file__)
'''


class FunctionRef(str):
    """A ``!function <module>.<name>`` value in a task YAML (the harness imports it from the YAML's folder)."""


@dataclass(frozen=True)
class AnswerFilter:
    """What a ``generate`` task's scorer does with a generation (the fields of its suite YAML)."""

    answer_pattern: str
    occurrence: str
    fallback: str
    normalizer: str
    compare: str

    @classmethod
    def from_task(cls, task: Any) -> "AnswerFilter":
        return cls(str(task.answer_pattern), str(task.get("occurrence", "first")),
                   str(task.get("fallback", "last_number")), str(task.normalizer), str(task.get("compare", "exact")))

    def key(self, answer: str | None) -> str:
        """The normalised answer in the form the harness compares (``INVALID`` when there is none)."""
        if answer is None or answer == INVALID:
            return INVALID
        value = NORMALIZERS[self.normalizer](answer)
        if value is None:
            return INVALID
        return equivalence_key(value) if self.compare == "is_equiv" else value

    def target(self, gold: str | None) -> str:
        """``doc_to_target`` of a row whose reference, as loralab's scorer reads it, is ``gold``."""
        if gold is None:
            return NO_REFERENCE
        return equivalence_key(gold) if self.compare == "is_equiv" else gold

    @property
    def native_regex(self) -> bool:
        """Can the harness' regex filter read the answer (exactly what loralab's extraction reads)?"""
        return self.fallback == "none" and re.compile(self.answer_pattern).groups == 1

    def filter_list(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]]
        if self.native_regex:
            steps = [{"function": "regex", "regex_pattern": self.answer_pattern,
                      "group_select": 0 if self.occurrence == "first" else -1, "fallback": INVALID}]
            if self.normalizer != "strip" or self.compare == "is_equiv":
                steps.append({"function": "custom", "filter_fn": FunctionRef(f"{HOOKS_MODULE}.normalize")})
        else:
            steps = [{"function": "custom", "filter_fn": FunctionRef(f"{HOOKS_MODULE}.extract")}]
        return [{"name": "loralab", "filter": [*steps, {"function": "take_first"}]}]

    def needs_hooks(self) -> bool:
        return not self.native_regex or self.normalizer != "strip" or self.compare != "exact"

    def write_hooks(self, task_dir: Path) -> None:
        (task_dir / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        (task_dir / f"{HOOKS_MODULE}.py").write_text(HOOKS_SOURCE, encoding="utf-8")


Responses = list[list[str]]


def task_hooks(module_file: str) -> tuple[Callable[..., Responses], Callable[..., Responses], Callable[..., Any]]:
    """``extract``, ``normalize`` and ``process_results`` for the task whose settings lie beside ``module_file``."""
    settings = AnswerFilter(**json.loads((Path(module_file).parent / SETTINGS_FILE).read_text(encoding="utf-8")))

    def extract(resps: Responses, docs: Any) -> Responses:
        return [[settings.key(extract_answer(r, settings.answer_pattern, settings.fallback, settings.occurrence))
                 for r in rs] for rs in resps]

    def normalize(resps: Responses, docs: Any) -> Responses:
        return [[settings.key(r) for r in rs] for rs in resps]

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        # math-verify: the filtered answer against the raw reference (doc_to_target)
        prediction = None if results[0] == INVALID else results[0]
        return {"exact_match": float(math_equal(prediction, str(doc["lm_target"]))[0])}

    return extract, normalize, process_results

"""A generative task's answer reading as lm-evaluation-harness filters, so an exported task re-scores a run.

Every ``generate`` task that the harness decodes is written to ``<run>/lm_eval/<task>/`` as a ``generate_until``
task (:mod:`loralab.evaluation.lm_eval_generate`). Its ``filter_list`` is made from the task's own filter chain
(:mod:`loralab.evaluation.filters`), so the standard CLI gives loralab's number on the same generations::

    lm_eval --model hf --model_args pretrained=<base>,peft=<run>/adapter \\
        --include_path <run>/lm_eval/<task> --tasks loralab_<task>

The harness' list, with ``doc_to_target`` the reference in the form it compares:

1. ``regex`` — the harness' own filter, where the chain starts with a ``regex`` step that the harness reads
   exactly as loralab does: one group, no credit without a match (``fallback: none``; ``group_select`` 0 for
   the first match, -1 for the last; no match → ``[invalid]``). Any other chain gets a ``custom`` step
   (:func:`task_hooks`' ``extract``) that runs the whole chain instead;
2. ``custom`` (``normalize``) — the rest of the chain and, for ``compare: is_equiv``,
   :func:`loralab.evaluation.math_equiv.equivalence_key`, so that lm-eval's ``exact_match`` gives ``is_equiv``'s
   verdicts; left out where the rest only strips (the regex filter strips already);
3. ``take_first``.

``compare: math_verify`` has no such key: its task also names ``process_results`` (:func:`task_hooks`), which
compares with math-verify. The ``custom`` steps and ``process_results`` come from ``loralab_answer.py`` beside
the task YAML, a two-line module that binds this module's functions to ``answer_filter.json`` (the chain and
the comparison); running them needs loralab importable where ``lm_eval`` runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loralab.evaluation.filters import FilterChain, NormalizeFilter, RegexFilter, parse_chain
from loralab.evaluation.math_equiv import equivalence_key, math_equal

INVALID = "[invalid]"                  # the harness regex filter's no-match value, kept through the chain
NO_REFERENCE = "\n(no reference)"      # a target no filtered answer equals: loralab scores such a row wrong
SETTINGS_FILE = "answer_filter.json"
HOOKS_MODULE = "loralab_answer"
HOOKS_SOURCE = f'''"""lm-eval hooks of this exported task: loralab's answer reading, configured by {SETTINGS_FILE}."""
from loralab.evaluation.lm_eval_filters import task_hooks

extract, normalize, process_results = task_hooks(__file__)
'''
# answer_filter.json of exports written before answer readings were chains: its keys, as chain parameters
_FLAT_SETTINGS = {"answer_pattern": ("regex", "pattern"), "fallback": ("regex", "fallback"),
                  "occurrence": ("regex", "occurrence"), "normalizer": ("normalize", "how")}


class FunctionRef(str):
    """A ``!function <module>.<name>`` value in a task YAML (the harness imports it from the YAML's folder)."""


@dataclass(frozen=True)
class HarnessReading:
    """What a ``generate`` task's scorer does with a generation: its filter chain, then its comparison."""

    chain: FilterChain
    compare: str

    def key(self, answer: str | None) -> str:
        """A filtered answer in the form the harness compares (``INVALID`` when there is none)."""
        if answer is None:
            return INVALID
        return equivalence_key(answer) if self.compare == "is_equiv" else answer

    def target(self, gold: str | None) -> str:
        """``doc_to_target`` of a row whose reference, as loralab's scorer reads it, is ``gold``."""
        if gold is None:
            return NO_REFERENCE
        return equivalence_key(gold) if self.compare == "is_equiv" else gold

    @property
    def native_regex(self) -> bool:
        """Can the harness' regex filter take the chain's first step (reading exactly what loralab reads)?"""
        first = self.chain.steps[0]
        return isinstance(first, RegexFilter) and first.fallback == "none" and _groups(first.pattern) == 1

    @property
    def _rest_needed(self) -> bool:
        """After the harness' regex (which strips), does anything remain to be done on the harness side?"""
        strips = all(isinstance(s, NormalizeFilter) and s.how == "strip" for s in self.chain.after_first())
        return not strips or self.compare == "is_equiv"

    def filter_list(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]]
        if self.native_regex:
            first = self.chain.steps[0]
            assert isinstance(first, RegexFilter)
            steps = [{"function": "regex", "regex_pattern": first.pattern,
                      "group_select": 0 if first.occurrence == "first" else -1, "fallback": INVALID}]
            if self._rest_needed:
                steps.append({"function": "custom", "filter_fn": FunctionRef(f"{HOOKS_MODULE}.normalize")})
        else:
            steps = [{"function": "custom", "filter_fn": FunctionRef(f"{HOOKS_MODULE}.extract")}]
        return [{"name": "loralab", "filter": [*steps, {"function": "take_first"}]}]

    def needs_hooks(self) -> bool:
        return not self.native_regex or self._rest_needed or self.compare != "exact"

    def settings(self) -> dict[str, Any]:
        return {"filters": self.chain.specs(), "compare": self.compare}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "HarnessReading":
        """From ``answer_filter.json``; the flat keys of older exports are read as the chain they declared."""
        if "filters" not in settings:
            steps: dict[str, dict[str, Any]] = {"regex": {}, "normalize": {}}
            for key, (step, param) in _FLAT_SETTINGS.items():
                steps[step][param] = settings[key]
            specs = [{"function": name, **params} for name, params in steps.items()]
            return cls(parse_chain(specs, SETTINGS_FILE), str(settings["compare"]))
        return cls(parse_chain(settings["filters"], SETTINGS_FILE), str(settings["compare"]))

    def write_hooks(self, task_dir: Path) -> None:
        (task_dir / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n", encoding="utf-8")
        (task_dir / f"{HOOKS_MODULE}.py").write_text(HOOKS_SOURCE, encoding="utf-8")


def _groups(pattern: str) -> int:
    return re.compile(pattern).groups


Responses = list[list[str]]


def task_hooks(module_file: str) -> tuple[Callable[..., Responses], Callable[..., Responses], Callable[..., Any]]:
    """``extract``, ``normalize`` and ``process_results`` for the task whose settings lie beside ``module_file``."""
    reading = HarnessReading.from_settings(
        json.loads((Path(module_file).parent / SETTINGS_FILE).read_text(encoding="utf-8")))
    rest = reading.chain.after_first()

    def extract(resps: Responses, docs: Any) -> Responses:
        return [[reading.key(reading.chain(r)) for r in rs] for rs in resps]

    def normalize(resps: Responses, docs: Any) -> Responses:
        return [[INVALID if r == INVALID else reading.key(rest(r)) for r in rs] for rs in resps]

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        # math-verify: the filtered answer against the raw reference (doc_to_target)
        prediction = None if results[0] == INVALID else results[0]
        return {"exact_match": float(math_equal(prediction, str(doc["lm_target"]))[0])}

    return extract, normalize, process_results

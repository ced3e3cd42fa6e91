"""Answer filters: how a generative task reads its answer out of a generation, as a named chain in its YAML.

A ``generate`` task declares its reading as ``filters:``, a list of steps applied in order to the generation
(lm-evaluation-harness' ``filter_list`` is the model: each step is named, configured by keyword, and does one
thing)::

    filters:
      - {function: regex, pattern: "The answer is: (.*)", occurrence: last, fallback: none}
      - {function: normalize, how: metamath_number}

Each step maps a text to a text, or to ``None``: no answer, which every later step passes on and the scorer
counts as unanswered (the harness' ``[invalid]``). The steps:

``regex``      group 1 of the ``first`` (default) or ``last`` match of ``pattern``, stripped; where nothing
               matches, ``fallback: none`` gives no answer and ``fallback: last_number`` the last number of
               the text (stated in every chain: a reading that falls back says so)
``normalize``  one of :data:`loralab.evaluation.extraction.NORMALIZERS` (``how:``), e.g. MetaMath's GSM8K
               number, its MATH cut, the first number as written

A new step is a frozen dataclass with a ``name`` (what ``function:`` says), its parameters as fields (checked in
``__post_init__``) and
``__call__``, added to :data:`FILTERS`; :mod:`loralab.evaluation.lm_eval_filters` then decides how an exported
harness task expresses it (by default through loralab's own chain).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Iterator, Mapping, Sequence

from loralab.errors import ConfigError
from loralab.evaluation.extraction import FALLBACKS, NORMALIZERS, OCCURRENCES, extract_answer

__all__ = ["FILTERS", "AnswerStep", "FilterChain", "NormalizeFilter", "RegexFilter", "parse_chain"]


class AnswerStep:
    """One step of a chain: a text (or ``None``: no answer) in, a text or ``None`` out."""

    name: ClassVar[str]

    def __call__(self, text: str | None) -> str | None:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The step as a suite YAML declares it (``function`` first, then every parameter)."""
        return {"function": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]


@dataclasses.dataclass(frozen=True)
class RegexFilter(AnswerStep):
    """Group 1 of the chosen match of ``pattern``; ``fallback`` where there is none."""

    name: ClassVar[str] = "regex"
    pattern: str
    fallback: str
    occurrence: str = "first"

    def __post_init__(self) -> None:
        try:
            groups = re.compile(self.pattern).groups
        except re.error as err:
            raise ConfigError(f"pattern={self.pattern!r} is not a regular expression ({err})") from err
        if groups < 1:
            raise ConfigError(f"pattern={self.pattern!r} has no group: the answer is group 1, e.g. "
                              f"'The answer is: (.*)'")
        _choice("occurrence", self.occurrence, OCCURRENCES)
        _choice("fallback", self.fallback, FALLBACKS)

    def __call__(self, text: str | None) -> str | None:
        return None if text is None else extract_answer(text, self.pattern, self.fallback, self.occurrence)


@dataclasses.dataclass(frozen=True)
class NormalizeFilter(AnswerStep):
    """The answer in the form the task compares (:data:`~loralab.evaluation.extraction.NORMALIZERS`)."""

    name: ClassVar[str] = "normalize"
    how: str

    def __post_init__(self) -> None:
        _choice("how", self.how, tuple(NORMALIZERS))

    def __call__(self, text: str | None) -> str | None:
        return NORMALIZERS[self.how](text)


FILTERS: dict[str, type[AnswerStep]] = {f.name: f for f in (RegexFilter, NormalizeFilter)}


@dataclasses.dataclass(frozen=True)
class FilterChain:
    """The steps of a task's answer reading, applied in order."""

    steps: tuple[AnswerStep, ...]

    def __call__(self, generation: str | None) -> str | None:
        text = generation
        for step in self.steps:
            text = step(text)
        return text

    def __iter__(self) -> Iterator[AnswerStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def after_first(self) -> "FilterChain":
        return FilterChain(self.steps[1:])

    def normalizers(self) -> "FilterChain":
        """Its ``normalize`` steps alone: what a reference answer goes through unless the task says otherwise."""
        return FilterChain(tuple(s for s in self.steps if isinstance(s, NormalizeFilter)))

    def specs(self) -> list[dict[str, Any]]:
        return [step.spec() for step in self.steps]


def _choice(key: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r}; valid: {sorted(valid)}")


def parse_step(spec: Any) -> AnswerStep:
    """One step from its YAML mapping; ConfigError names the bad name, key or value and the valid ones."""
    if not isinstance(spec, Mapping) or "function" not in spec:
        raise ConfigError(f"{spec!r} is not a filter step: write {{function: <filter>, ...}} with a filter of "
                          f"{sorted(FILTERS)}")
    name = spec["function"]
    if name not in FILTERS:
        raise ConfigError(f"function={name!r}; valid filters: {sorted(FILTERS)}")
    cls = FILTERS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    params = {str(k): v for k, v in spec.items() if k != "function"}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"filter {name} has no parameter {unknown}; its parameters: {sorted(fields)}")
    missing = [k for k, f in fields.items()
               if k not in params and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"filter {name} lacks {missing}; its parameters: {sorted(fields)}")
    return cls(**params)


def parse_chain(specs: Any, where: str) -> FilterChain:
    """A chain from the YAML list ``specs``; errors say ``where`` (e.g. ``eval task gsm8k: filters``) and the step."""
    if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)) or not specs:
        raise ConfigError(f"{where}={specs!r}: a chain is a non-empty list of steps, e.g. "
                          f"[{{function: regex, pattern: 'The answer is: (.*)', fallback: none}}, "
                          f"{{function: normalize, how: number}}]")
    steps = []
    for i, spec in enumerate(specs):
        try:
            steps.append(parse_step(spec))
        except ConfigError as err:
            raise ConfigError(f"{where}[{i}]: {err}") from err
    return FilterChain(tuple(steps))

"""``type: generate`` — a generated answer, read by the task's filter chain and compared with the reference.

Fields (beside the decoding ones of :class:`~loralab.evaluation.tasks.generative.GenerativeTask`):

``answer_field``     the record's reference answer
``filters``          the answer's reading, a chain of :mod:`loralab.evaluation.filters` steps
``gold_pattern``     group 1 of its first match is the reference (e.g. GSM8K's "#### 72"; no match: empty)
``gold_normalizer``  how the reference is normalised; default: the chain's ``normalize`` steps
``compare``          ``exact`` (string equality of the normalised answers), ``is_equiv`` (MATH: MetaMath's
                     string normalisation) or ``math_verify`` (MATH: mathematical equivalence, string fallback
                     recorded); the MATH comparators read the reference as written (stripped), normalising
                     both sides themselves
``metric``           ``exact_match`` or ``accuracy`` (the mean of the verdicts)
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from omegaconf import OmegaConf

from loralab.evaluation.extraction import NORMALIZERS, extract_answer
from loralab.evaluation.filters import FilterChain, parse_chain
from loralab.evaluation.math_equiv import is_equiv, math_equal
from loralab.evaluation.tasks.base import Records, TaskOutput, choice
from loralab.evaluation.tasks.generative import GenerativeTask

MATH_COMPARES = ("is_equiv", "math_verify")  # MATH comparators: they read the raw reference answer
COMPARES = ("exact", *MATH_COMPARES)
_AS_FILTERS = ("the answer's reading is a filter chain: filters: [{function: regex, pattern: ..., fallback: ..., "
               "occurrence: ...}, {function: normalize, how: ...}] (conf/eval/arith_shift.yaml shows one)")


class GenerateTask(GenerativeTask):
    type_name: ClassVar[str] = "generate"
    required = (*GenerativeTask.required, "answer_field", "filters")
    optional = (*GenerativeTask.optional, "gold_pattern", "gold_normalizer", "compare")
    metrics = ("exact_match", "accuracy")
    replaced = {k: _AS_FILTERS for k in ("answer_pattern", "occurrence", "fallback", "normalizer")}

    def check(self) -> None:
        super().check()
        specs = OmegaConf.to_container(self.cfg.filters, resolve=True)
        self.chain: FilterChain = parse_chain(specs, f"eval task {self.name}: filters")
        self.compare = str(self.cfg.get("compare", "exact"))
        choice(self.cfg, "compare", self.compare, COMPARES)
        gold = self.cfg.get("gold_normalizer")
        if gold is not None:
            choice(self.cfg, "gold_normalizer", gold, list(NORMALIZERS))

    def answer(self, generation: str) -> str | None:
        """The answer the chain reads in a generation (None: unanswered)."""
        return self.chain(generation)

    def gold(self, record: dict[str, Any]) -> str | None:
        """The reference answer as the task compares it: read by ``gold_pattern`` (if any), then normalised by
        ``gold_normalizer`` (default: the chain's ``normalize`` steps); raw for the MATH comparators, which
        normalise both sides themselves."""
        gold_text = str(record[self.cfg.answer_field])
        if self.cfg.get("gold_pattern"):
            gold_text = extract_answer(gold_text, self.cfg.gold_pattern, fallback="none") or ""
        if self.compare in MATH_COMPARES:
            return gold_text.strip()
        if self.cfg.get("gold_normalizer"):
            return NORMALIZERS[self.cfg.gold_normalizer](gold_text)
        return self.chain.normalizers()(gold_text)

    def check_record(self, record: dict[str, Any]) -> None:
        super().check_record(record)
        self.gold(record)

    def score(self, records: Records, prompts: Sequence[str], generations: Sequence[str]) -> TaskOutput:
        samples = []
        for record, prompt, generation in zip(records, prompts, generations):
            extracted = self.answer(generation)
            gold = self.gold(record)
            sample = {"prompt": prompt, "generation": generation, "extracted": extracted, "gold": gold}
            if self.compare == "math_verify":
                sample["correct"], sample["comparison"] = math_equal(extracted, gold or "")
            elif self.compare == "is_equiv":
                sample["correct"] = is_equiv(extracted, gold)
            else:
                sample["correct"] = extracted is not None and extracted == gold
            samples.append(sample)
        extras: dict[str, Any] = {"unanswered": sum(s["extracted"] is None for s in samples)}
        if self.compare == "math_verify":
            extras["string_fallback"] = sum(s["comparison"] == "string" for s in samples)
        return samples, extras

    def harness_reading(self) -> Any:
        from loralab.evaluation.lm_eval_filters import HarnessReading

        return HarnessReading(self.chain, self.compare)

    def harness_targets(self, records: Records) -> list[str]:
        reading = self.harness_reading()
        return [reading.target(self.gold(r)) for r in records]

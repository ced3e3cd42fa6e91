"""lm-evaluation-harness as the generation engine of ``generate`` and ``code`` tasks (suite ``engine: lm_eval``).

The harness decodes; loralab scores. For each task loralab writes ``<run>/lm_eval/<task>/`` holding a
``generate_until`` task YAML and ``docs.jsonl`` (one row per prompt: the fully rendered prompt as the context,
the gold answer as the target), and all generative tasks of a suite go through ONE ``simple_evaluate`` call
on the in-memory model wrapped in ``HFLM`` (``TaskManager(include_path=<run>/lm_eval, include_defaults=False)``).
The raw generations (``resps`` of the logged samples) are then scored by each task type's own scorer, as under
the native engine (the filter chain and comparison, or the code sandbox); those verdicts are the ones reported.
A ``generate`` task's YAML also carries its filter chain as harness filters
(:mod:`loralab.evaluation.lm_eval_filters`), so the exported task re-scores the run to the same number through the
``lm_eval`` CLI; a ``code`` task's harness
metric stays a bare string match (the harness runs no model-written code; loralab's sandbox scores it).

Generations equal the native engine's (tests/test_lm_eval_generate.py) because the harness is fed what
:func:`loralab.evaluation.generation.generate_greedy` feeds the model:

* the same token ids: the native engine puts BOS before every prompt, which HFLM does only where the
  tokenizer's own template adds it (the embedded char tokenizer's and GPT-2's do not); so the BOS *string* is
  written at the head of each context and HFLM, which then encodes without special tokens, turns it into the
  BOS id. Every context is checked against the native encoding (a mismatch is warned about and counted);
* the same decoding: ``do_sample: false``, the task's ``num_beams``, ``max_gen_toks`` = ``max_new_tokens``,
  the tokenizer's EOS, left padding with an attention mask (HFLM pads left for generation);
* the same stop handling: the text is cut before the earliest stop string, and greedy rows stop decoding there.
  lm-eval's own criteria (``MultiTokenEOSCriteria``, one per stop string, the EOS string added) keep a flag per
  row but answer for the whole batch: the batch ends once every row has shown *the same* stop string, and until
  then rows that have stopped keep decoding (a row at "Response" and one at EOS end nothing). The HFLM here
  (:func:`_hflm_class`) passes the native engine's per-row criterion instead
  (:class:`~loralab.evaluation.generation.StopAtStrings`): each row ends at its own stop string, the batch when
  all have ended; the text is the same, the steps fewer. The harness already batches by length (its
  ``Collator`` sorts contexts longest first). With beam search the harness gets no stop strings and its
  stopping criteria are switched off: they keep one flag per prompt but are called on the beam-expanded batch,
  and always include the EOS string, so they end the beams early and differently for different batch sizes
  (measured on the embedded model). The beams then run as Transformers' own beam search does natively (to
  ``max_new_tokens`` or until every beam has ended with EOS) and loralab cuts the text.

One documented difference: HFLM keeps only the last ``max_length - max_new_tokens`` tokens of a context, where
``max_length`` is the model's real number of positions; the native engine never cuts a prompt. A prompt that
does not fit is warned about, flagged ``truncated: true`` in its sample and counted (``truncated_prompts``).
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from loralab.errors import ConfigError
from loralab.evaluation.extraction import truncate_at_stop
from loralab.evaluation.generation import StopAtStrings, encode_prompt
from loralab.evaluation.lm_eval_engine import harness_version
from loralab.evaluation.lm_eval_filters import HOOKS_MODULE, FunctionRef, HarnessReading

log = logging.getLogger(__name__)
# config attributes that hold a model's number of positions, in the order the harness reads them
POSITION_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


@dataclass
class GenerationJob:
    """One task's prompts (rendered, without BOS) and decoding settings."""

    name: str
    prompts: list[str]
    targets: list[str]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    num_beams: int = 1
    answer_filter: HarnessReading | None = None   # generate tasks: the export's filters read the answer as loralab


@dataclass
class HarnessGenerations:
    generations: list[str]      # cut at the earliest stop string, as the native engine cuts
    truncated: list[bool]       # the harness kept only the tail of this prompt
    extras: dict[str, Any]      # for metrics.json


def context_window(model: Any, tokenizer: Any) -> int | None:
    """The model's real number of positions (config first, then the tokenizer's limit), or None if unknown."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in POSITION_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**8 else None  # HF uses 1e30 for "unset"


def harness_contexts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The harness' context per prompt: the BOS string first wherever the native engine adds the BOS id."""
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else ""
    return [bos + p for p in prompts]


def generation_kwargs(job: GenerationJob, eos_token_id: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # beam search: no stop strings in the harness (see the module docstring); loralab cuts the text
        "until": list(job.stop) if job.num_beams == 1 else [],
        "max_gen_toks": int(job.max_new_tokens),
        "do_sample": False,
        "num_beams": int(job.num_beams),
    }
    if eos_token_id is not None:  # the native engine stops every sequence at the tokenizer's EOS
        kwargs["eos_token_id"] = int(eos_token_id)
    return kwargs


@functools.cache
def _hflm_class() -> type:
    """HFLM whose greedy decoding ends each row at its stop strings, and whose beam search is Transformers' own
    (lm-eval's stop criteria dropped when ``num_beams > 1``)."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import StoppingCriteriaList

    class LoralabHFLM(HFLM):
        def _model_generate(self, context: Any, max_length: int, stop: list[str], **generation_kwargs: Any) -> Any:
            if int(generation_kwargs.get("num_beams") or 1) > 1:  # see the module docstring
                return super()._model_generate(context, max_length, [], **generation_kwargs)
            # greedy: the native engine's per-row criterion instead of lm-eval's per-batch one (the module
            # docstring says why); the rest is HFLM's call: no temperature, its autocast, pad id and cache
            generation_kwargs.pop("temperature", None)
            criteria = StoppingCriteriaList([StopAtStrings(self.tokenizer, stop, context.shape[1])])
            dtype = getattr(self, "mixed_precision_dtype", None)  # HFLM option absent from older lm-eval releases
            with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
                return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                           pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                                           **generation_kwargs)

    return LoralabHFLM


class _TaskDumper(yaml.SafeDumper):
    """Safe YAML plus the harness' ``!function`` tag."""


_TaskDumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


def write_generate_task(work_dir: Path, task_id: str, contexts: Sequence[str], targets: Sequence[str],
                        gen_kwargs: dict[str, Any], answer_filter: HarnessReading | None = None) -> Path:
    """The rows as json lines and the ``generate_until`` task YAML that reads them; returns the YAML's path.

    With ``answer_filter`` the task carries loralab's answer reading as harness filters (and ``targets`` are
    the references in the form they compare), so the ``lm_eval`` CLI re-scores it to loralab's number
    (:mod:`loralab.evaluation.lm_eval_filters`); without, the harness' metric is a bare string match."""
    work_dir.mkdir(parents=True, exist_ok=True)
    docs = work_dir / "docs.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for i, (context, target) in enumerate(zip(contexts, targets)):
            f.write(json.dumps({"doc_index": i, "lm_text": context, "lm_target": target}) + "\n")
    config: dict[str, Any] = {
        "task": task_id,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        # column names: the context is the fully rendered prompt, no template rendering by the harness
        "doc_to_text": "lm_text",
        "doc_to_target": "lm_target",
        "target_delimiter": "",
        "generation_kwargs": gen_kwargs,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    if answer_filter is not None:
        config["filter_list"] = answer_filter.filter_list()
        if answer_filter.compare == "math_verify":
            config["process_results"] = FunctionRef(f"{HOOKS_MODULE}.process_results")
        if answer_filter.needs_hooks():
            answer_filter.write_hooks(work_dir)
    path = work_dir / f"{task_id}.yaml"
    path.write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _check_contexts(tokenizer: Any, job: GenerationJob, contexts: list[str], window: int) -> tuple[list[bool], int]:
    """Per prompt: would the harness cut it; and how many contexts the harness encodes unlike the native engine."""
    budget = window - int(job.max_new_tokens)
    if budget <= 0:
        raise ConfigError(f"eval task {job.name}: max_new_tokens={job.max_new_tokens} leaves no room for a prompt in "
                          f"the model's {window} positions (engine lm_eval); lower eval.tasks.<i>.max_new_tokens")
    harness_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"] if contexts else []
    mismatched = sum(ids != encode_prompt(tokenizer, p) for ids, p in zip(harness_ids, job.prompts))
    truncated = [len(ids) > budget for ids in harness_ids]
    if any(truncated):
        log.warning("eval task %s: %d of %d prompts are longer than the %d tokens lm-eval leaves for the context "
                    "(%d positions - %d new tokens); the harness keeps only their last %d tokens. Their samples "
                    "say truncated=true; metrics.json counts them (truncated_prompts).", job.name, sum(truncated),
                    len(truncated), budget, window, job.max_new_tokens, budget)
    if mismatched:
        log.warning("eval task %s: the harness encodes %d of %d prompts unlike the native engine (BOS handling "
                    "of this tokenizer); generations may differ (metrics.json: context_mismatch)", job.name,
                    mismatched, len(contexts))
    return truncated, mismatched


def generate_tasks(model: Any, tokenizer: Any, jobs: Sequence[GenerationJob], work_dir: Path,
                   batch_size: int) -> dict[str, HarnessGenerations]:
    """Generate for several tasks in ONE harness call (one model wrapper, one task index)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # add_bos_token=False: the BOS is in the context already (see harness_contexts); max_length: the model's
    # positions (where neither config nor tokenizer knows them, the harness' own default)
    lm = _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                       max_length=context_window(model, tokenizer), add_bos_token=False)
    window = int(lm.max_length)
    ids = {job.name: f"loralab_{job.name}" for job in jobs}
    checks = {}
    for job in jobs:
        contexts = harness_contexts(tokenizer, job.prompts)
        checks[job.name] = _check_contexts(tokenizer, job, contexts, window)
        write_generate_task(Path(work_dir) / job.name, ids[job.name], contexts, job.targets,
                            generation_kwargs(job, tokenizer.eos_token_id), job.answer_filter)
    output = simple_evaluate(
        model=lm, tasks=list(ids.values()),
        task_manager=TaskManager(include_path=str(work_dir), include_defaults=False),
        log_samples=True, bootstrap_iters=0, verbosity="WARNING",
        # greedy/beam decoding needs no seeds; None leaves the caller's random state alone
        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
    )
    if output is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results")
    results = {}
    version = harness_version()
    for job in jobs:
        logged = sorted(output["samples"][ids[job.name]], key=lambda s: s["doc_id"])
        if len(logged) != len(job.prompts):
            raise RuntimeError(f"lm-eval returned {len(logged)} generations for {len(job.prompts)} prompts "
                               f"of task {job.name}")
        truncated, mismatched = checks[job.name]
        # resps[0][0]: the raw generation (before any harness filter)
        generations = [truncate_at_stop(str(s["resps"][0][0]), job.stop) for s in logged]
        extras = {"engine": "lm_eval", "lm_eval_version": version, "harness_max_length": window,
                  "truncated_prompts": sum(truncated), "context_mismatch": mismatched}
        results[job.name] = HarnessGenerations(generations, truncated, extras)
    return results

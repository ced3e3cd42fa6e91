"""One evaluator for every suite declared in ``conf/eval/*.yaml``.

A suite is a versioned protocol (``protocol:``) and a list of tasks; a task names its data loader
(``data._target_``), its type and the fields that type reads:

``generate``           generation; ``answer_pattern``/``occurrence``/``fallback``/``normalizer``
                       extract the answer (``gold_normalizer`` reads the reference, default ``normalizer``);
                       ``compare: exact`` (string equality after normalising), ``compare: is_equiv`` (MATH:
                       MetaMath's string normalisation) or ``compare: math_verify`` (MATH: mathematical
                       equivalence, string fallback recorded)
``code``               generation, then the program runs in the sandbox (``benchmark: humaneval|mbpp``);
                       needs the suite's opt-in ``allow_code_execution: true``
``lm_eval``            lm-evaluation-harness scores the in-memory model (log-likelihood multiple choice)
``classify``           image classification, top-1
``sequence_classify``  sentence (pair) classification or regression (GLUE)

The suite's ``engine`` generates for ``generate``/``code`` tasks: ``native`` (:mod:`loralab.evaluation.generation`)
or ``lm_eval`` (the harness' ``generate_until``, :mod:`loralab.evaluation.lm_eval_generate`); the same code then
scores both, and the protocol names the engine (``<name>/vN+${.engine}``) so tables never pool the two.

Per-sample records (prompt, generation, extracted answer, verdict, engine, ...) go to ``samples/<task>.jsonl``
in the run directory; each task's score comes with its standard error (:mod:`loralab.evaluation.metrics`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from loralab.instantiate import build
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from loralab.data.text import render, render_prompt
from loralab.data.vision import ImageRecords
from loralab.errors import ConfigError
from loralab.evaluation.checks import (
    GENERATIVE_TYPES,
    MATH_COMPARES,
    REQUIRED,
    check_suite,
    require_code_opt_in,
    suite_engine,
)
from loralab.evaluation.extraction import NORMALIZERS, extract_answer, extract_code
from loralab.evaluation.generation import generate_greedy
from loralab.evaluation.math_equiv import is_equiv, math_equal
from loralab.evaluation.metrics import aggregate, mean_and_stderr, score
from loralab.io import atomic_write_jsonl

__all__ = ["TASK_TYPES", "evaluate_suite", "load_suite_records", "mean_and_stderr", "run_harness_generation",
           "score_answers", "score_code"]

Records = Sequence[dict[str, Any]]
TaskOutput = tuple[list[dict[str, Any]], dict[str, Any]]  # per-sample records, extras for metrics.json


# ----------------------------------------------------------------------------------------------- prompts
def build_prompt(task: DictConfig, record: dict[str, Any]) -> str:
    """``query_template`` (if any) first makes the record's ``query`` — e.g. HumanEval's instruction around its
    prompt — then the prompt template (``prompt_template_with_input`` for rows with a non-empty ``input``)."""
    if task.get("query_template"):
        record = {**record, "query": render(task.query_template, record)}
    return render_prompt(record, task.prompt_template, task.get("prompt_template_with_input"))


def _generations(model: nn.Module, tokenizer: Any, task: DictConfig, prompts: list[str], progress: bool) -> list[str]:
    # Stop strings cut the text where a stopping decoder (MetaMath's vLLM stop list) would have ended it; greedy
    # decoding also ends each sequence there (loralab.evaluation.generation)
    return generate_greedy(model, tokenizer, prompts, int(task.max_new_tokens), int(task.batch_size), progress,
                           num_beams=int(task.get("num_beams") or 1), stop=[str(s) for s in task.get("stop") or []])


# ------------------------------------------------------------------------------------ generative answers
def gold_answer(task: DictConfig, record: dict[str, Any]) -> str | None:
    """The reference answer as the task compares it: read by ``gold_pattern`` (if any), then normalised by
    ``gold_normalizer`` (default: the task's ``normalizer``); raw for the MATH comparators, which normalise
    both sides themselves."""
    gold_text = str(record[task.answer_field])
    if task.get("gold_pattern"):  # e.g. GSM8K's reference solutions end with "#### 72"
        gold_text = extract_answer(gold_text, task.gold_pattern, fallback="none") or ""
    if task.get("compare", "exact") in MATH_COMPARES:
        return gold_text.strip()
    return NORMALIZERS[task.get("gold_normalizer") or task.normalizer](gold_text)


def extracted_answer(task: DictConfig, generation: str) -> str | None:
    """The task's answer in a generation: pattern, occurrence and fallback, then its normaliser."""
    return NORMALIZERS[task.normalizer](extract_answer(generation, task.answer_pattern,
                                                       task.get("fallback", "last_number"),
                                                       task.get("occurrence", "first")))


def score_answers(task: DictConfig, records: Records, prompts: Sequence[str],
                  generations: Sequence[str]) -> TaskOutput:
    """Per-sample verdicts of a generative task from its generations (no model needed: golden tests use it)."""
    compare = task.get("compare", "exact")
    samples = []
    for record, prompt, generation in zip(records, prompts, generations):
        extracted = extracted_answer(task, generation)
        gold = gold_answer(task, record)
        sample = {"prompt": prompt, "generation": generation, "extracted": extracted, "gold": gold}
        if compare == "math_verify":
            sample["correct"], sample["comparison"] = math_equal(extracted, gold or "")
        elif compare == "is_equiv":
            sample["correct"] = is_equiv(extracted, gold)
        else:
            sample["correct"] = extracted is not None and extracted == gold
        samples.append(sample)
    extras: dict[str, Any] = {"unanswered": sum(s["extracted"] is None for s in samples)}
    if compare == "math_verify":
        extras["string_fallback"] = sum(s["comparison"] == "string" for s in samples)
    return samples, extras


def _with_engine(output: TaskOutput, engine: str) -> TaskOutput:
    samples, extras = output
    return [{**s, "engine": engine} for s in samples], {**extras, "engine": engine}


def _generate_task(model: nn.Module, tokenizer: Any, task: DictConfig, suite: DictConfig, records: Records,
                   out_dir: Path, progress: bool) -> TaskOutput:
    prompts = [build_prompt(task, r) for r in records]
    return _with_engine(score_answers(task, records, prompts, _generations(model, tokenizer, task, prompts, progress)),
                        "native")


# ------------------------------------------------------------------------------------------------- code
def _humaneval_completion(record: dict[str, Any], code: str) -> str:
    # A full definition of the entry point follows the prompt as new top-level code (the prompt's imports stay
    # in scope, its docstring-only stub is a valid function that gets redefined); anything else continues
    # the prompt's function body, as a completion model writes it.
    if re.search(rf"^\s*def\s+{re.escape(record['entry_point'])}\s*\(", code, re.M):
        return "\n" + code
    return code


def score_code(task: DictConfig, records: Records, prompts: Sequence[str], generations: Sequence[str],
               allow_code_execution: bool) -> TaskOutput:
    """Extract each generation's code, run it with the benchmark's tests in the sandbox, one verdict each."""
    from loralab.evaluation.code_exec import score_humaneval, score_mbpp
    from loralab.evaluation.sandbox import SandboxLimits

    limits = SandboxLimits(timeout_s=float(task.get("timeout_s") or 10.0), cpu_s=int(task.get("timeout_s") or 10))
    workers = int(task.get("workers") or 2)
    extracted = [extract_code(g) for g in generations]
    ids = [str(r["task_id"]) for r in records]
    if task.benchmark == "humaneval":
        completions = {tid: _humaneval_completion(r, code) for tid, r, (code, _) in zip(ids, records, extracted)}
        result = score_humaneval(completions, allow_code_execution=allow_code_execution,
                                 problems={tid: r for tid, r in zip(ids, records)}, limits=limits, workers=workers)
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


def _code_task(model: nn.Module, tokenizer: Any, task: DictConfig, suite: DictConfig, records: Records,
               out_dir: Path, progress: bool) -> TaskOutput:
    require_code_opt_in(suite)  # checked before training too; repeated so no path runs code without it
    prompts = [build_prompt(task, r) for r in records]
    generations = _generations(model, tokenizer, task, prompts, progress)
    return _with_engine(score_code(task, records, prompts, generations, allow_code_execution=True), "native")


# ------------------------------------------------------------------------------- lm-eval as generator
def run_harness_generation(model: nn.Module, tokenizer: Any, tasks: Sequence[DictConfig], suite: DictConfig,
                           records: dict[str, Records], out_dir: Path) -> dict[str, TaskOutput]:
    """``generate``/``code`` tasks of an ``engine: lm_eval`` suite: lm-eval generates (one call for all of
    them), then the native engine's scorers give the verdicts."""
    from loralab.evaluation.lm_eval_filters import AnswerFilter
    from loralab.evaluation.lm_eval_generate import GenerationJob, generate_tasks

    if any(t.type == "code" for t in tasks):
        require_code_opt_in(suite)  # as for native generation: no path runs code without the opt-in
    prompts = {t.name: [build_prompt(t, r) for r in records[t.name]] for t in tasks}
    jobs = []
    for t in tasks:
        reading = AnswerFilter.from_task(t) if t.type == "generate" else None
        jobs.append(GenerationJob(
            name=t.name, prompts=prompts[t.name], max_new_tokens=int(t.max_new_tokens),
            targets=[reading.target(gold_answer(t, r)) if reading else "" for r in records[t.name]],
            stop=[str(x) for x in t.get("stop") or []], num_beams=int(t.get("num_beams") or 1),
            answer_filter=reading))
    # batch size changes speed, not generations (left padding); the smallest fits every task's memory budget
    batch_size = min(int(t.batch_size) for t in tasks)
    generated = generate_tasks(model, tokenizer, jobs, Path(out_dir) / "lm_eval", batch_size)
    outputs = {}
    for t in tasks:
        result, rows, task_prompts = generated[t.name], records[t.name], prompts[t.name]
        samples, extras = (score_code(t, rows, task_prompts, result.generations, allow_code_execution=True)
                           if t.type == "code" else score_answers(t, rows, task_prompts, result.generations))
        samples = [{**s, "engine": "lm_eval", "truncated": cut} for s, cut in zip(samples, result.truncated)]
        outputs[t.name] = samples, {**extras, **result.extras}
    return outputs


# ------------------------------------------------------------------------------------------- lm-eval
def _lm_eval_settings(task: DictConfig) -> dict[str, Any]:
    settings = OmegaConf.to_container(task.lm_eval, resolve=True)
    assert isinstance(settings, dict)
    return settings


def run_lm_eval_tasks(model: nn.Module, tokenizer: Any, tasks: Sequence[DictConfig], records: dict[str, Records],
                      out_dir: Path) -> dict[str, TaskOutput]:
    """All ``lm_eval`` tasks of a suite in one harness call (its fixed cost is paid once)."""
    from loralab.evaluation.lm_eval_engine import run_tasks

    jobs = [(t.name, list(records[t.name]), _lm_eval_settings(t)) for t in tasks]
    # one model wrapper serves every task: check_suite made their max_length agree
    return run_tasks(model, tokenizer, jobs, Path(out_dir) / "lm_eval", max(int(t.batch_size) for t in tasks),
                     tasks[0].get("max_length"))


def _lm_eval_task(model: nn.Module, tokenizer: Any, task: DictConfig, suite: DictConfig, records: Records,
                  out_dir: Path, progress: bool) -> TaskOutput:
    return run_lm_eval_tasks(model, tokenizer, [task], {task.name: records}, out_dir)[task.name]


# ------------------------------------------------------------------------------------ classification
@torch.no_grad()
def _classify_task(model: nn.Module, tokenizer: Any, task: DictConfig, suite: DictConfig, records: Records,
                   out_dir: Path, progress: bool) -> TaskOutput:
    model.eval()
    device = next(model.parameters()).device
    samples = []
    for start in tqdm(range(0, len(records), task.batch_size), desc=f"classifying {task.name}",
                      disable=not progress, leave=False):
        chunk = records[start:start + task.batch_size]
        pixels = torch.stack([torch.as_tensor(r["pixel_values"]) for r in chunk]).to(device)
        predicted = model(pixel_values=pixels).logits.argmax(-1).tolist()
        for record, pred in zip(chunk, predicted):
            samples.append({"gold": int(record["labels"]), "predicted": int(pred),
                            "correct": int(pred) == int(record["labels"])})
    return samples, {}


@torch.no_grad()
def _sequence_classify_task(model: nn.Module, tokenizer: Any, task: DictConfig, suite: DictConfig, records: Records,
                            out_dir: Path, progress: bool) -> TaskOutput:
    from loralab.data.training_data import SequenceClassificationCollator, encode_sentences

    model.eval()
    device = next(model.parameters()).device
    regression = int(task.get("num_labels") or 2) == 1
    collate = SequenceClassificationCollator(tokenizer.pad_token_id or 0, regression)
    samples = []
    for start in tqdm(range(0, len(records), task.batch_size), desc=f"classifying {task.name}",
                      disable=not progress, leave=False):
        chunk = list(records[start:start + task.batch_size])
        encoded = encode_sentences(tokenizer, chunk, int(task.max_length))
        batch = collate([{**e, "labels": r["label"]} for e, r in zip(encoded, chunk)])
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        outputs = logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
        for record, pred in zip(chunk, outputs):
            gold = float(record["label"]) if regression else int(record["label"])
            samples.append({"text_a": record["text_a"], "text_b": record.get("text_b"), "gold": gold,
                            "predicted": pred, "correct": None if regression else pred == gold})
    extras = {}
    for metric in task.get("extra_metrics") or []:
        extras[metric], extras[f"{metric}_stderr"] = score(metric, samples)
    return samples, extras


TaskRunner = Callable[[nn.Module, Any, DictConfig, DictConfig, Records, Path, bool], TaskOutput]
TASK_TYPES: dict[str, TaskRunner] = {
    "generate": _generate_task, "code": _code_task, "lm_eval": _lm_eval_task,
    "classify": _classify_task, "sequence_classify": _sequence_classify_task,
}
assert TASK_TYPES.keys() == REQUIRED.keys(), "every task type needs its checks in loralab.evaluation.checks"


# ----------------------------------------------------------------------------------------- running
def load_suite_records(suite: DictConfig) -> dict[str, Records]:
    """Every task's evaluation records, loaded before training so a missing data set fails early."""
    check_suite(suite)
    records: dict[str, Records] = {}
    for task in suite.tasks:
        rows = build(task.data)
        if not isinstance(rows, ImageRecords):  # image rows stay lazy: decoded one batch at a time
            rows = list(rows)
        if not len(rows):
            raise ConfigError(f"eval task {task.name}: its data set is empty")
        records[task.name] = rows[: task.limit] if task.get("limit") else rows
    return records


def evaluate_suite(
    model: nn.Module, tokenizer: Any, suite: DictConfig, out_dir: Path, progress: bool = True,
    records: dict[str, Records] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score every task of a suite; returns ``{task: {metric, metric_stderr, n, ...extras}}``.

    With ``aggregate: {name, metric}`` the suite also reports the unweighted mean over its tasks under
    ``name`` (e.g. the commonsense "Avg" column).
    """
    records = records if records is not None else load_suite_records(suite)
    harness_tasks = [t for t in suite.tasks if t.type == "lm_eval"]
    harness = run_lm_eval_tasks(model, tokenizer, harness_tasks, records, Path(out_dir)) if harness_tasks else {}
    generative = [t for t in suite.tasks if t.type in GENERATIVE_TYPES]
    if generative and suite_engine(suite) == "lm_eval":
        harness.update(run_harness_generation(model, tokenizer, generative, suite, records, Path(out_dir)))
    results: dict[str, dict[str, Any]] = {}
    for task in suite.tasks:
        if task.name in harness:
            samples, extras = harness[task.name]
        else:
            samples, extras = TASK_TYPES[task.type](model, tokenizer, task, suite, records[task.name], Path(out_dir),
                                                    progress)
        atomic_write_jsonl(Path(out_dir) / "samples" / f"{task.name}.jsonl", samples)
        value, stderr = score(task.metric, samples)
        # the metric comes first: the run log and the table builder read it as the task's headline number
        results[task.name] = {task.metric: value, f"{task.metric}_stderr": stderr, "n": len(samples), **extras}
    if suite.get("aggregate"):
        metric = suite.aggregate.metric
        results[suite.aggregate.name] = {**aggregate([results[t.name] for t in suite.tasks], metric),
                                         "tasks": [t.name for t in suite.tasks]}
    return results

"""One evaluator for every suite declared in ``conf/eval/*.yaml``.

A suite is a list of tasks; a task names its data loader (``data._target_``), its type (``generate`` or
``classify``) and, for generation, its prompt template and answer-extraction protocol. Per-sample records
(prompt, generation, extracted answer, verdict) go to ``samples/<task>.jsonl`` in the run directory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from loralab.instantiate import build
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from loralab.data.text import render
from loralab.errors import ConfigError
from loralab.evaluation.extraction import NORMALIZERS, extract_answer
from loralab.evaluation.generation import generate_greedy
from loralab.io import atomic_write_jsonl


def mean_and_stderr(verdicts: list[bool]) -> tuple[float, float]:
    n = len(verdicts)
    if n == 0:
        return float("nan"), float("nan")
    p = sum(verdicts) / n
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return p, stderr


def _generate_task(model: nn.Module, tokenizer: Any, task: DictConfig, records: list[dict], progress: bool):
    normalize = NORMALIZERS[task.normalizer]
    prompts = [render(task.prompt_template, r) for r in records]
    generations = generate_greedy(model, tokenizer, prompts, task.max_new_tokens, task.batch_size, progress)
    samples = []
    for record, prompt, generation in zip(records, prompts, generations):
        extracted = normalize(extract_answer(generation, task.answer_pattern, task.fallback))
        gold_text = str(record[task.answer_field])
        if task.get("gold_pattern"):  # e.g. GSM8K's reference solutions end with "#### 72"
            gold_text = extract_answer(gold_text, task.gold_pattern, fallback="none") or ""
        gold = normalize(gold_text)
        samples.append({
            "prompt": prompt, "generation": generation, "extracted": extracted, "gold": gold,
            "correct": extracted is not None and extracted == gold,
        })
    return samples


@torch.no_grad()
def _classify_task(model: nn.Module, tokenizer: Any, task: DictConfig, records: list[dict], progress: bool):
    model.eval()
    device = next(model.parameters()).device
    samples = []
    for start in tqdm(range(0, len(records), task.batch_size), desc="classifying", disable=not progress, leave=False):
        chunk = records[start:start + task.batch_size]
        pixels = torch.stack([torch.as_tensor(r["pixel_values"]) for r in chunk]).to(device)
        predicted = model(pixel_values=pixels).logits.argmax(-1).tolist()
        for record, pred in zip(chunk, predicted):
            samples.append({"gold": int(record["labels"]), "predicted": int(pred), "correct": int(pred) == int(record["labels"])})
    return samples


TASK_TYPES: dict[str, Callable[..., list[dict]]] = {"generate": _generate_task, "classify": _classify_task}


def check_suite(suite: DictConfig) -> None:
    """Protocol errors surface before training, not after it."""
    for task in suite.tasks:
        if task.type not in TASK_TYPES:
            raise ConfigError(f"eval task {task.name}: type={task.type!r}; valid types: {sorted(TASK_TYPES)}")
        if task.type == "generate" and task.normalizer not in NORMALIZERS:
            raise ConfigError(f"eval task {task.name}: normalizer={task.normalizer!r}; valid: {sorted(NORMALIZERS)}")


def load_suite_records(suite: DictConfig) -> dict[str, list[dict]]:
    """Every task's evaluation records, loaded before training so a missing data set fails early."""
    check_suite(suite)
    records = {}
    for task in suite.tasks:
        rows = list(build(task.data))
        records[task.name] = rows[: task.limit] if task.get("limit") else rows
    return records


def evaluate_suite(
    model: nn.Module, tokenizer: Any, suite: DictConfig, out_dir: Path, progress: bool = True,
    records: dict[str, list[dict]] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every task of a suite; returns ``{task: {metric, metric_stderr, n}}``."""
    records = records if records is not None else load_suite_records(suite)
    results: dict[str, dict[str, float]] = {}
    for task in suite.tasks:
        samples = TASK_TYPES[task.type](model, tokenizer, task, records[task.name], progress)
        atomic_write_jsonl(Path(out_dir) / "samples" / f"{task.name}.jsonl", samples)
        score, stderr = mean_and_stderr([s["correct"] for s in samples])
        results[task.name] = {task.metric: score, f"{task.metric}_stderr": stderr, "n": len(samples)}
    return results

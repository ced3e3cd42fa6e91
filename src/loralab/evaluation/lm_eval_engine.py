"""lm-evaluation-harness as an evaluation engine for tasks of ``type: lm_eval`` (log-likelihood scoring; the
harness as the generation engine of ``generate``/``code`` tasks is :mod:`loralab.evaluation.lm_eval_generate`).

The harness scores the in-memory model (wrapped in ``HFLM``, no reload from disk) on a task YAML that loralab
writes from the suite's configuration: ``dataset_path: json`` over a local file holding the rows that the
task's own loader produced (so the hub-or-local-copy logic and the override keys are the same as for every
other task), plus the suite's ``lm_eval`` block (output type, metrics, target delimiter). Both the YAML and
the rows land in ``<run>/lm_eval/<task>/``, next to the per-sample records, so the exact harness input of a
result is kept. ``TaskManager(include_path=..., include_defaults=False)`` indexes only that directory.

Rows carry ``lm_text`` (context), ``lm_choices`` (continuations) and ``lm_target`` (gold index); see
:mod:`loralab.data.commonsense` for the multiple-input form WinoGrande uses.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import yaml

from loralab.errors import ConfigError

LM_FIELDS = ("lm_text", "lm_choices", "lm_target")
OUTPUT_TYPES = ("multiple_choice",)
HARNESS_METRICS = ("acc", "acc_norm")


def harness_version() -> str:
    """The installed lm-evaluation-harness version (recorded per task in metrics.json)."""
    from importlib.metadata import version

    return version("lm_eval")


def write_task(work_dir: Path, task_id: str, records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """The rows as json lines and the task YAML that reads them; returns the YAML's path."""
    missing = [f for f in LM_FIELDS if records and f not in records[0]]
    if missing:
        raise ConfigError(
            f"lm-eval task {task_id}: rows lack {missing}; the data loader must give lm_text/lm_choices/lm_target "
            f"(rows in the hub schema do; LLM-Adapters' test.json files do not)"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    docs = work_dir / "docs.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps({"doc_index": i, **{k: r[k] for k in LM_FIELDS}}) + "\n")
    config = {
        "task": task_id,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "output_type": settings.get("output_type", "multiple_choice"),
        # Column names: the harness reads each field as is (no template rendering of model-visible text).
        "doc_to_text": "lm_text",
        "doc_to_choice": "lm_choices",
        "doc_to_target": "lm_target",
        "target_delimiter": settings.get("target_delimiter", " "),
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in settings.get("metrics", HARNESS_METRICS)],
        "metadata": {"version": settings.get("version", 1)},
    }
    path = work_dir / f"{task_id}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_tasks(model: Any, tokenizer: Any, jobs: Sequence[tuple[str, Sequence[dict[str, Any]], dict[str, Any]]],
              work_dir: Path, batch_size: int, max_length: int | None = None) -> dict[str, tuple[list[dict[str, Any]],
                                                                                            dict[str, Any]]]:
    """Score several tasks ``(name, rows, settings)`` in ONE harness call (one model wrapper, one task index:
    the harness' fixed cost per call is paid once per suite, not once per task).

    Returns per task: per-sample records and extras (both harness metrics with standard errors, the version).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ids = {name: f"loralab_{name}" for name, _, _ in jobs}
    for name, records, settings in jobs:
        write_task(Path(work_dir) / name, ids[name], records, settings)
    # The harness logs every task it indexes at INFO; the run log only needs warnings from it.
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    output = simple_evaluate(
        model=lm, tasks=list(ids.values()),
        task_manager=TaskManager(include_path=str(work_dir), include_defaults=False),
        log_samples=True, bootstrap_iters=0, verbosity="WARNING",
    )
    if output is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results")
    return {name: _collect(output["samples"][ids[name]], settings) for name, _, settings in jobs}


def _collect(logged: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    select = settings.get("select", "acc")
    samples = []
    for s in sorted(logged, key=lambda s: s["doc_id"]):
        doc = s["doc"]
        loglikelihoods = [float(r[0]) for r in s["filtered_resps"]]
        multiple_input = isinstance(doc["lm_text"], int)
        choices = doc["lm_choices"]
        gold = doc["lm_text"] if multiple_input else doc["lm_target"]
        samples.append({
            "prompt": choices if multiple_input else doc["lm_text"],
            "continuations": [doc["lm_target"]] if multiple_input else choices,
            "loglikelihoods": loglikelihoods,
            "predicted": int(max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)),
            "gold": int(gold),
            # the harness' own verdicts (acc_norm: log-likelihood per character of the continuation)
            "acc": float(s.get("acc", math.nan)), "acc_norm": float(s.get("acc_norm", math.nan)),
            "correct": bool(s[select]),
        })
    extras: dict[str, Any] = {"engine": "lm_eval", "lm_eval_version": harness_version(), "selected": select}
    for metric in settings.get("metrics", HARNESS_METRICS):
        values = [s[metric] for s in samples]
        n = len(values)
        mean = sum(values) / n if n else math.nan
        extras[metric] = mean
        extras[f"{metric}_stderr"] = math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else math.nan
    return samples, extras

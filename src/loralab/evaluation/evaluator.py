"""One evaluator for every suite declared in ``conf/eval/*.yaml``.

A suite is a versioned protocol (``protocol:``) and a list of tasks; a task names its data loader
(``data._target_``), its type and the fields that type reads. The types — ``generate``, ``code``, ``lm_eval``,
``sequence_classify``, ``classify`` — are the classes of :mod:`loralab.evaluation.tasks`, each owning its
fields, checks, decoding or scoring, and metric; this module loads the records, lets each type run its tasks,
and writes what they give.

Per-sample records (prompt, generation, extracted answer, verdict, engine, ...) go to ``samples/<task>.jsonl``
in the run directory; each task's score comes with its standard error (:mod:`loralab.evaluation.metrics`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.evaluation.checks import by_type, check_suite
from loralab.evaluation.metrics import aggregate
from loralab.evaluation.tasks.base import Records, TaskOutput
from loralab.instantiate import build
from loralab.io import atomic_write_jsonl

if TYPE_CHECKING:
    from torch import nn

__all__ = ["evaluate_suite", "load_suite_records"]


def load_suite_records(suite: DictConfig) -> dict[str, Records]:
    """Every task's evaluation records, loaded before training so a missing data set fails early."""
    from loralab.data.vision import ImageRecords

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
    tasks = check_suite(suite)
    outputs: dict[str, TaskOutput] = {}
    # each runner gets all the tasks it serves at once, so a fixed cost (a harness call) is paid once per suite
    for runner, group in by_type(tasks, key=lambda t: type(t).runner()).items():
        outputs.update(runner.run(group, model, tokenizer, records, Path(out_dir), progress))
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        samples, extras = outputs[task.name]
        atomic_write_jsonl(Path(out_dir) / "samples" / f"{task.name}.jsonl", samples)
        results[task.name] = task.result(samples, extras)
    if suite.get("aggregate"):
        metric = suite.aggregate.metric
        results[suite.aggregate.name] = {**aggregate([results[t.name] for t in tasks], metric),
                                         "tasks": [t.name for t in tasks]}
    return results

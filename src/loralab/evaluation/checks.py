"""Checks of an evaluation suite's configuration, run before training so a bad suite fails in seconds and
writes nothing: the suite's own settings (protocol, task names, engine, aggregate) here, each task's fields and
choices by its type (:mod:`loralab.evaluation.tasks`), and (once the model is loaded) whether generation fits."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.evaluation.metrics import METRICS
from loralab.evaluation.tasks import TaskType, suite_tasks
from loralab.evaluation.tasks.generative import ENGINES, suite_engine

if TYPE_CHECKING:
    from torch import nn

__all__ = ["check_suite", "check_suite_fits_model", "suite_engine"]


def _check_engine(suite: DictConfig, tasks: list[TaskType]) -> None:
    engine = suite_engine(suite)
    if engine not in ENGINES:
        raise ConfigError(f"eval suite {suite.get('name')!r}: engine={engine!r}; valid: {sorted(ENGINES)} "
                          f"(e.g. eval.engine=lm_eval)")
    generative = [t.name for t in tasks if t.generative]
    if generative and not str(suite.protocol).endswith(f"+{engine}"):
        raise ConfigError(f"eval suite {suite.get('name')}: protocol={suite.protocol!r} does not name the engine "
                          f"{engine!r} that generates for {generative}; end it with '+${{.engine}}' (e.g. "
                          f"protocol: my-suite/v1+${{.engine}}) so runs of different engines are never pooled")


def by_type(tasks: list[TaskType], key: Callable[[TaskType], type[TaskType]] = type
            ) -> dict[type[TaskType], list[TaskType]]:
    """The tasks grouped by ``key`` (default: their type), groups in the order they first appear in the suite."""
    groups: dict[type[TaskType], list[TaskType]] = {}
    for task in tasks:
        groups.setdefault(key(task), []).append(task)
    return groups


def check_suite(suite: DictConfig) -> list[TaskType]:
    """Protocol errors surface before training, not after it; returns the suite's tasks, checked."""
    if not suite.get("protocol"):
        raise ConfigError(f"eval suite {suite.get('name')!r} has no protocol: every suite names its versioned "
                          f"protocol (e.g. protocol: metamath-gsm8k/v1)")
    names = [t.name for t in suite.tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"eval suite {suite.name}: task names {duplicated} appear more than once")
    for task in [t for t in suite.tasks if t.get("engine") is not None]:  # before the fields: a clearer message
        raise ConfigError(f"eval task {task.name}: engine is a suite setting (the suite's protocol names it); "
                          f"set eval.engine={task.engine} instead of a per-task engine")
    tasks = suite_tasks(suite)
    _check_engine(suite, tasks)
    for kind, group in by_type(tasks).items():
        kind.check_together(group)
    if suite.get("aggregate"):
        if suite.aggregate.metric not in METRICS:
            raise ConfigError(f"eval suite {suite.name}: aggregate.metric={suite.aggregate.metric!r}; "
                              f"valid: {sorted(METRICS)}")
        if suite.aggregate.name in names:
            raise ConfigError(f"eval suite {suite.name}: aggregate.name={suite.aggregate.name!r} is also a task name")
    return tasks


def check_suite_fits_model(suite: DictConfig, model: nn.Module, tokenizer: Any) -> None:
    """Checks that need the model, run before training so a misfit fails in seconds, not after the run (under
    the harness, each generative task's ``max_new_tokens`` must leave room for a prompt)."""
    for kind, group in by_type(suite_tasks(suite)).items():
        kind.check_fits_model(group, model, tokenizer)

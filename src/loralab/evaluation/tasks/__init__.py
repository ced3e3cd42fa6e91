"""The evaluation task types, registered once: the suite checks, the evaluator and the planner all read
:data:`TASK_TYPES`.

==================== ====================================================== ===========================
``type:``            what it is                                              module
==================== ====================================================== ===========================
``generate``         a generated answer read by a filter chain, compared      :mod:`.generate`
``code``             generated code run with the benchmark's tests            :mod:`.code`
``lm_eval``          log-likelihood multiple choice, scored by lm-eval        :mod:`.multiple_choice`
``sequence_classify`` sentence (pair) classification / regression (GLUE)      :mod:`.sequence_classify`
``classify``         image classification, top-1                              :mod:`.image_classify`
==================== ====================================================== ===========================

A new type is a :class:`~loralab.evaluation.tasks.base.TaskType` subclass (its fields, metrics, checks, how it
runs) added to :data:`TASK_TYPES`; ``docs/evaluation.md`` walks through one.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.evaluation.tasks.base import TaskType
from loralab.evaluation.tasks.code import CodeTask
from loralab.evaluation.tasks.generate import GenerateTask
from loralab.evaluation.tasks.image_classify import ImageClassifyTask
from loralab.evaluation.tasks.multiple_choice import MultipleChoiceTask
from loralab.evaluation.tasks.sequence_classify import SequenceClassifyTask

__all__ = ["TASK_TYPES", "TaskType", "suite_tasks", "task_type"]

TASK_TYPES: dict[str, type[TaskType]] = {
    cls.type_name: cls
    for cls in (GenerateTask, CodeTask, MultipleChoiceTask, SequenceClassifyTask, ImageClassifyTask)
}


def task_type(task: Any) -> type[TaskType]:
    """The class of a task config's ``type``; ConfigError naming the valid types for any other."""
    name = task.get("type")
    if name not in TASK_TYPES:
        raise ConfigError(f"eval task {task.get('name')}: type={name!r}; valid types: {sorted(TASK_TYPES)}")
    return TASK_TYPES[name]


def suite_tasks(suite: DictConfig) -> list[TaskType]:
    """Every task of a suite as an instance of its type (each checked on construction)."""
    return [task_type(t)(t, suite) for t in suite.tasks]

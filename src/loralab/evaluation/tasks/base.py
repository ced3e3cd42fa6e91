"""What every evaluation task type is: the fields it reads, its metrics, how it runs and how it is summarised.

A task of a suite YAML (``eval.tasks[i]``) becomes an instance of the class its ``type:`` names
(:data:`loralab.evaluation.tasks.TASK_TYPES`). Constructing it checks it, so a bad task fails before training
and writes nothing: a missing field, a field the type does not read (a typo would otherwise be ignored), a
metric the type cannot give, and the type's own choices (:meth:`TaskType.check`).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.evaluation.metrics import score

if TYPE_CHECKING:
    from torch import nn

Records = Sequence[dict[str, Any]]
TaskOutput = tuple[list[dict[str, Any]], dict[str, Any]]  # per-sample records, extras for metrics.json

# fields every task has: its name and type, its data loader, how many rows to keep, its metric, its batch
COMMON_REQUIRED = ("name", "type", "data", "metric", "batch_size")
COMMON_OPTIONAL = ("limit",)


def choice(task: DictConfig, key: str, value: Any, valid: Sequence[Any]) -> None:
    """A ConfigError naming the task, the key, the bad value and the valid ones, unless ``value`` is valid."""
    if value not in valid:
        raise ConfigError(f"eval task {task.name}: {key}={value!r}; valid: {sorted(valid)}")


class TaskType:
    """One kind of evaluation task. Subclasses declare :attr:`type_name` (the YAML ``type:``), their
    :attr:`required` and :attr:`optional` fields, their :attr:`metrics`, whether they decode token by token
    (:attr:`generative`: the planner's cost model and the suite's ``engine`` depend on it), and implement
    :meth:`run`."""

    type_name: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    generative: ClassVar[bool] = False
    # fields earlier versions of the type read, with what replaced them (named in the error)
    replaced: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: DictConfig, suite: DictConfig) -> None:
        self.cfg = cfg
        self.suite = suite
        self.name = str(cfg.name)
        self._check_fields()
        choice(cfg, "metric", cfg.get("metric"), self.metrics)
        self.check()

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return (*COMMON_REQUIRED, *cls.required, *COMMON_OPTIONAL, *cls.optional)

    def _check_fields(self) -> None:
        replaced = sorted(k for k in self.cfg if k in self.replaced)
        if replaced:
            raise ConfigError(f"eval task {self.name}: {replaced} " + "; ".join(
                dict.fromkeys(self.replaced[k] for k in replaced)))
        missing = [k for k in (*COMMON_REQUIRED, *self.required) if self.cfg.get(k) is None]
        if missing:
            raise ConfigError(f"eval task {self.name} (type {self.type_name}) lacks {missing}")
        unknown = [str(k) for k in self.cfg if k not in self.fields()]
        for key in unknown:
            close = difflib.get_close_matches(key, self.fields(), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"eval task {self.name}: type {self.type_name} has no field {key!r}; {hint}"
                              f"its fields: {sorted(self.fields())}")

    def check(self) -> None:
        """The type's own checks of its fields (called on construction)."""

    @classmethod
    def check_together(cls, tasks: Sequence["TaskType"]) -> None:
        """Checks across a suite's tasks of this type (e.g. settings that one shared harness call needs)."""

    @classmethod
    def check_fits_model(cls, tasks: Sequence["TaskType"], model: nn.Module, tokenizer: Any) -> None:
        """Checks that need the loaded model, run before training."""

    def check_record(self, record: dict[str, Any]) -> None:
        """Builds from one record what the task will build from every record (its prompt, its reference), so a
        template or field that does not fit the data fails before training (KeyError, ValueError, ...)."""

    @classmethod
    def runner(cls) -> type["TaskType"]:
        """The class whose :meth:`run` serves this type; the evaluator gives it all the suite's tasks that share
        it at once (e.g. every generative task goes through one harness call)."""
        return cls

    @classmethod
    def run(cls, tasks: Sequence["TaskType"], model: nn.Module, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        """Per-sample records and extras of the given tasks (all the suite's tasks this class runs)."""
        raise NotImplementedError

    def result(self, samples: Sequence[dict[str, Any]], extras: dict[str, Any]) -> dict[str, Any]:
        """The task's entry of metrics.json: its metric first (the run log and the table builder read it as the
        headline), its standard error, the number of samples, then the extras."""
        metric = str(self.cfg.metric)
        value, stderr = score(metric, samples)
        return {metric: value, f"{metric}_stderr": stderr, "n": len(samples), **extras}

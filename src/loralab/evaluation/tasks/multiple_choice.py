"""``type: lm_eval`` — log-likelihood multiple choice, scored BY lm-evaluation-harness on the in-memory model.

Fields: ``lm_eval`` (the harness settings: ``output_type`` (``multiple_choice``), ``metrics`` (``acc``,
``acc_norm``), ``select`` (the headline one), ``target_delimiter``, ``version``), ``max_length`` (the model
wrapper's; one per suite). The rows carry ``lm_text``/``lm_choices``/``lm_target``; the harness input (task YAML
and rows) is kept in ``<run>/lm_eval/<task>/`` (:mod:`loralab.evaluation.lm_eval_engine`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from omegaconf import OmegaConf

from loralab.errors import ConfigError
from loralab.evaluation.tasks.base import Records, TaskOutput, TaskType, choice

if TYPE_CHECKING:
    from torch import nn


class MultipleChoiceTask(TaskType):
    type_name: ClassVar[str] = "lm_eval"
    required = ("lm_eval",)
    optional = ("max_length",)
    metrics = ("accuracy",)

    def check(self) -> None:
        from loralab.evaluation.lm_eval_engine import HARNESS_METRICS, OUTPUT_TYPES

        harness = self.cfg.lm_eval
        choice(self.cfg, "lm_eval.output_type", harness.get("output_type", "multiple_choice"), OUTPUT_TYPES)
        choice(self.cfg, "lm_eval.select", harness.get("select", "acc"), HARNESS_METRICS)

    @classmethod
    def check_together(cls, tasks: Sequence[TaskType]) -> None:
        lengths = {t.cfg.get("max_length") for t in tasks}
        if len(lengths) > 1:
            raise ConfigError(f"eval suite {tasks[0].suite.name}: its lm_eval tasks share one model wrapper, so "
                              f"they need one max_length; got {sorted(lengths, key=str)}")

    def settings(self) -> dict[str, Any]:
        settings = OmegaConf.to_container(self.cfg.lm_eval, resolve=True)
        assert isinstance(settings, dict)
        return settings

    @classmethod
    def run(cls, tasks: Sequence[TaskType], model: nn.Module, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        """All of a suite's ``lm_eval`` tasks in one harness call (its fixed cost is paid once)."""
        from loralab.evaluation.lm_eval_engine import run_tasks

        chosen = [t for t in tasks if isinstance(t, MultipleChoiceTask)]
        jobs = [(t.name, list(records[t.name]), t.settings()) for t in chosen]
        # one model wrapper serves every task: check_together made their max_length agree
        return run_tasks(model, tokenizer, jobs, Path(out_dir) / "lm_eval", max(int(t.cfg.batch_size) for t in chosen),
                         chosen[0].cfg.get("max_length"))

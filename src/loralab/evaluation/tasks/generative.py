"""What the generative task types share: the prompt, the decoding settings and who decodes (the suite's engine).

The suite's ``engine`` generates: ``native`` (:func:`loralab.evaluation.generation.generate_greedy`, one call per
task) or ``lm_eval`` (the harness' ``generate_until``, :mod:`loralab.evaluation.lm_eval_generate`, one call for
all the suite's generative tasks, ``generate`` and ``code`` alike). Either way the text is cut before the task's
earliest ``stop`` string, and the type's own
:meth:`GenerativeTask.score` gives the verdicts, so both engines are scored by the same code; the protocol
names the engine (``<name>/vN+${.engine}``) so tables never pool the two.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.evaluation.tasks.base import Records, TaskOutput, TaskType

if TYPE_CHECKING:
    from torch import nn

ENGINES = ("lm_eval", "native")       # who generates for the generative tasks


def suite_engine(suite: DictConfig) -> str:
    """Who generates for the suite's generative tasks (``native`` where the suite says nothing)."""
    return str(suite.get("engine") or "native")


def build_prompt(task: DictConfig, record: dict[str, Any]) -> str:
    """``query_template`` (if any) first makes the record's ``query`` — e.g. HumanEval's instruction around its
    prompt — then the prompt template (``prompt_template_with_input`` for rows with a non-empty ``input``)."""
    from loralab.data.text import render, render_prompt

    if task.get("query_template"):
        record = {**record, "query": render(task.query_template, record)}
    return render_prompt(record, task.prompt_template, task.get("prompt_template_with_input"))


class GenerativeTask(TaskType):
    """A task scored from generated text: decoding settings here, the reading and verdicts in the subclass."""

    generative: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("prompt_template", "max_new_tokens")
    optional: ClassVar[tuple[str, ...]] = ("prompt_template_with_input", "query_template", "stop", "num_beams")

    def check(self) -> None:
        beams = self.cfg.get("num_beams")
        if beams is not None and (not isinstance(beams, int) or isinstance(beams, bool) or beams < 1):
            raise ConfigError(f"eval task {self.name}: num_beams={beams!r}; it must be an integer >= 1")

    @property
    def stop(self) -> list[str]:
        return [str(s) for s in self.cfg.get("stop") or []]

    @property
    def num_beams(self) -> int:
        return int(self.cfg.get("num_beams") or 1)

    def prompt(self, record: dict[str, Any]) -> str:
        return build_prompt(self.cfg, record)

    def score(self, records: Records, prompts: Sequence[str], generations: Sequence[str]) -> TaskOutput:
        """Per-sample verdicts from the generations (no model needed: golden tests use it)."""
        raise NotImplementedError

    def harness_reading(self) -> Any:
        """What an exported harness task re-scores with (:class:`~loralab.evaluation.lm_eval_filters.HarnessReading`),
        or None where the harness keeps a bare string match."""
        return None

    def harness_targets(self, records: Records) -> list[str]:
        """``doc_to_target`` per row of the exported harness task."""
        return [""] * len(records)

    @classmethod
    def check_fits_model(cls, tasks: Sequence[TaskType], model: nn.Module, tokenizer: Any) -> None:
        """Under the harness, ``max_new_tokens`` must leave room for a prompt in the model's positions."""
        if not tasks or suite_engine(tasks[0].suite) != "lm_eval":
            return
        from loralab.evaluation.lm_eval_generate import context_window

        window = context_window(model, tokenizer)
        for task in tasks:
            if window is not None and int(task.cfg.max_new_tokens) >= window:
                raise ConfigError(f"eval task {task.name}: max_new_tokens={task.cfg.max_new_tokens} leaves no room "
                                  f"for a prompt in the model's {window} positions (engine lm_eval); lower "
                                  f"eval.tasks.<i>.max_new_tokens below {window}")

    @classmethod
    def runner(cls) -> type[TaskType]:
        return GenerativeTask  # every generative type of a suite decodes in one engine call (one harness call)

    def before_generating(self) -> None:
        """Called right before the model decodes for this task (a last check that must hold then)."""

    def check_record(self, record: dict[str, Any]) -> None:
        self.prompt(record)

    @classmethod
    def run(cls, tasks: Sequence[TaskType], model: nn.Module, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        generative = [t for t in tasks if isinstance(t, GenerativeTask)]
        for t in generative:
            t.before_generating()
        prompts = {t.name: [t.prompt(r) for r in records[t.name]] for t in generative}
        if suite_engine(generative[0].suite) == "lm_eval":
            return _run_harness(generative, model, tokenizer, records, prompts, out_dir)
        from loralab.evaluation.generation import generate_greedy

        outputs = {}
        for t in generative:
            # the stop strings end each greedy sequence during decoding and cut the text where a stopping
            # decoder (MetaMath's vLLM stop list) would have ended it (loralab.evaluation.generation)
            generations = generate_greedy(model, tokenizer, prompts[t.name], int(t.cfg.max_new_tokens),
                                          int(t.cfg.batch_size), progress, num_beams=t.num_beams, stop=t.stop)
            samples, extras = t.score(records[t.name], prompts[t.name], generations)
            outputs[t.name] = [{**s, "engine": "native"} for s in samples], {**extras, "engine": "native"}
        return outputs


def _run_harness(tasks: Sequence[GenerativeTask], model: nn.Module, tokenizer: Any, records: dict[str, Records],
                 prompts: dict[str, list[str]], out_dir: Path) -> dict[str, TaskOutput]:
    """lm-eval generates for all ``tasks`` in one call; each task's own scorer gives the verdicts."""
    from loralab.evaluation.lm_eval_generate import GenerationJob, generate_tasks

    jobs = [GenerationJob(name=t.name, prompts=prompts[t.name], max_new_tokens=int(t.cfg.max_new_tokens),
                          targets=t.harness_targets(records[t.name]), stop=t.stop, num_beams=t.num_beams,
                          answer_filter=t.harness_reading())
            for t in tasks]
    # batch size changes speed, not generations (left padding); the smallest fits every task's memory budget
    batch_size = min(int(t.cfg.batch_size) for t in tasks)
    generated = generate_tasks(model, tokenizer, jobs, Path(out_dir) / "lm_eval", batch_size)
    outputs = {}
    for t in tasks:
        result = generated[t.name]
        samples, extras = t.score(records[t.name], prompts[t.name], result.generations)
        samples = [{**s, "engine": "lm_eval", "truncated": cut} for s, cut in zip(samples, result.truncated)]
        outputs[t.name] = samples, {**extras, **result.extras}
    return outputs

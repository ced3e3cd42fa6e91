"""Checks of a run's values that fail before anything is loaded or written: the seed, every ``trainer.*``
option and the prompt templates' syntax; and, once the evaluation data is loaded, every generative task's
templates filled from its first record (so a template naming a field the records lack fails in seconds,
not after training).

Trainer options are passed to ``transformers.TrainingArguments`` as they are, so they are checked against it:
the key must be one of its fields, the value must have the field's type (read from its annotations), the
values that would train something other than asked are range-checked (a negative or NaN learning rate, a
batch of 0, ``max_steps=-5`` silently meaning "three epochs", ``save_steps=0`` silently meaning "never save"),
and finally the options are given to ``TrainingArguments`` itself, whose own checks (scheduler names,
optimiser names, strategy combinations...) then fail here too.
"""
from __future__ import annotations

import difflib
import enum
import math
import string
import types
import typing
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from loralab.errors import ConfigError

# Set by the runner from other config keys; a trainer.<key> would clash with them.
RUNNER_SET = {
    "output_dir": "checkpoints go to <run dir>/checkpoints; move results with paths.results_dir=",
    "seed": "use the top-level seed=",
    "data_seed": "the data order follows the top-level seed=",
    "report_to": "choose a logger with logger=",
    "disable_tqdm": "use progress=",
    "use_cpu": "set from whether a CUDA GPU is visible",
    "remove_unused_columns": "the collators need every column",
    "save_strategy": "checkpoints are saved every trainer.save_steps steps, so an interrupted run resumes",
}
SEED_LIMIT = 2**32  # numpy's seeding range, which transformers.set_seed uses


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _interval(v: Any) -> bool:
    """transformers reads a float below 1 as a fraction of the run's steps."""
    return (_integer(v) and v >= 1) or (_number(v) and 0 < v < 1)


# Values that TrainingArguments accepts but that would not train what was asked: (test, what is valid).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: _number(v) and v > 0, "a finite number > 0 (e.g. 3e-4)"),
    "per_device_train_batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "per_device_eval_batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "max_steps": (lambda v: _integer(v) and (v >= 1 or v == -1),
                  "an integer >= 1, or -1 to train for trainer.num_train_epochs"),
    "num_train_epochs": (lambda v: _number(v) and v > 0, "a number > 0"),
    "save_steps": (_interval, "an integer >= 1 (or a fraction of the run's steps in (0, 1)); checkpoints are "
                              "what an interrupted run resumes from"),
    "logging_steps": (_interval, "an integer >= 1 (or a fraction of the run's steps in (0, 1))"),
    "eval_steps": (lambda v: v is None or _interval(v), "an integer >= 1, a fraction in (0, 1), or null"),
    "warmup_steps": (lambda v: (_integer(v) and v >= 0) or (_number(v) and 0 <= v < 1),
                     "an integer >= 0 (or a fraction of the run's steps in [0, 1))"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "max_grad_norm": (lambda v: _number(v) and v >= 0, "a finite number >= 0 (0 turns clipping off)"),
    "adam_beta1": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "adam_beta2": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "adam_epsilon": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "label_smoothing_factor": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "save_total_limit": (lambda v: v is None or (_integer(v) and v >= 1), "an integer >= 1, or null to keep all"),
    "dataloader_num_workers": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
}


def check_seed(seed: Any) -> None:
    if not _integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"seed={seed!r} is invalid: seed must be an integer in 0..{SEED_LIMIT - 1} (e.g. seed=0)")


def _fields() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name) for f in fields(TrainingArguments) if f.init}


def _accepts(value: Any, hint: Any) -> tuple[bool, str]:
    """Whether ``value`` has the annotated type, and how the valid values read. Types this does not model
    (accelerate's ParallelismConfig, say) are accepted here and left to TrainingArguments itself."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    enums = [o for o in options if isinstance(o, type) and issubclass(o, enum.Enum)]
    described: list[str] = []
    for option in options:
        option_origin = typing.get_origin(option) or option
        if option is type(None):
            ok, what = value is None, "null"
        elif option is bool:
            ok, what = isinstance(value, bool), "true or false"
        elif option is int:
            ok, what = _integer(value), "an integer"
        elif option is float:
            ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif option is str:
            if enums:  # "SchedulerType | str": the string must name a member
                continue
            ok, what = isinstance(value, str), "a string"
        elif option in enums:
            names = [m.value for m in option]
            ok, what = isinstance(value, (str, option)) and str(getattr(value, "value", value)) in names, \
                f"one of {names}"
        elif option_origin is dict:
            ok, what = isinstance(value, Mapping), "a mapping"
        elif option_origin is list:
            ok, what = isinstance(value, (list, tuple)), "a list"
        elif option_origin is typing.Literal:
            ok, what = value in typing.get_args(option), " or ".join(repr(a) for a in typing.get_args(option))
        else:
            return True, ""
        if ok:
            return True, ""
        described.append(what)
    return False, " or ".join(described)


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Every ``trainer.*`` key and value, against ``TrainingArguments``' fields and :data:`RANGES`."""
    options = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(options, dict)
    known = _fields()
    for key, value in options.items():
        if key in RUNNER_SET:
            raise ConfigError(f"trainer.{key} is set by loralab itself ({RUNNER_SET[key]}); remove it")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"trainer.{key} is not an option of transformers.TrainingArguments{hint} (trainer.* "
                              f"keys are passed to it as they are)")
        ok, valid = _accepts(value, known[key])
        if not ok:
            raise ConfigError(f"trainer.{key}={value!r} is invalid: it must be {valid}")
        if key in RANGES and not RANGES[key][0](value):
            raise ConfigError(f"trainer.{key}={value!r} is invalid: it must be {RANGES[key][1]}")


def check_training_arguments(build_arguments: Callable[[], Any]) -> None:
    """``build_arguments()`` (the runner's own TrainingArguments construction), so that transformers' checks
    of the options together run before anything is written too."""
    try:
        build_arguments()
    except (TypeError, ValueError, ImportError) as err:
        said = " ".join(str(err).split()) or type(err).__name__  # its message on one line
        raise ConfigError(f"transformers.TrainingArguments rejects the trainer options: {said}") from err


# --------------------------------------------------------------------------------------------- templates
DATASET_TEMPLATES = ("prompt_template", "response_template", "prompt_template_with_input")
TASK_TEMPLATES = ("prompt_template", "prompt_template_with_input", "query_template")


def template_fields(template: str, where: str) -> list[str]:
    """The ``{field}`` names of a ``str.format`` template; ConfigError naming ``where`` if it does not parse."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ConfigError(f"{where}={template!r} is not a valid template ({err}); fields are written {{name}} "
                          f"and literal braces doubled, {{{{ and }}}}") from err
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{where}={template!r} has the placeholder {{{name}}}; placeholders must name a "
                              f"record field, e.g. {{question}}")
    return names


def check_template_syntax(cfg: DictConfig) -> None:
    """Every template of the data set and of the evaluation tasks parses (no data needed)."""
    for key in DATASET_TEMPLATES:
        if cfg.dataset.get(key) is not None:
            template_fields(str(cfg.dataset[key]), f"dataset.{key}")
    for i, task in enumerate(cfg.eval.tasks):
        for key in TASK_TEMPLATES:
            if task.get(key) is not None:
                template_fields(str(task[key]), f"eval.tasks.{i}.{key} (task {task.name})")


def check_templates_fill(suite: DictConfig, records: Mapping[str, Sequence[dict[str, Any]]]) -> None:
    """Each task builds its prompt (and gold answer) from its first record, as the evaluator will."""
    from loralab.evaluation.tasks import suite_tasks

    for i, task in enumerate(suite_tasks(suite)):
        rows = records.get(task.name)
        if not rows:
            continue
        first = dict(rows[0])
        try:
            task.check_record(first)
        except KeyError as err:
            raise ConfigError(
                f"eval task {task.name}: its template or answer_field uses the field {err.args[0]!r}, which its "
                f"records lack (the first record has {sorted(first)}); fix eval.tasks.{i}.prompt_template / "
                f"answer_field or the data") from err
        except (IndexError, AttributeError, ValueError) as err:
            raise ConfigError(f"eval task {task.name}: its prompt cannot be built from the first record "
                              f"({type(err).__name__}: {err})") from err


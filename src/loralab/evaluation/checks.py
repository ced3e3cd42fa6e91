"""Checks of an evaluation suite's configuration, run before training so a bad suite fails in seconds and
writes nothing: task types and their required fields, metric/normaliser/extraction choices, the engine and
the protocol naming it, the code-execution opt-in, and (once the model is loaded) whether generation fits."""
from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig
from torch import nn

from loralab.errors import ConfigError
from loralab.evaluation.extraction import FALLBACKS, NORMALIZERS, OCCURRENCES
from loralab.evaluation.metrics import CORPUS_METRICS, METRICS

__all__ = ["ENGINES", "GENERATIVE_TYPES", "MATH_COMPARES", "check_suite", "check_suite_fits_model",
           "require_code_opt_in", "suite_engine"]

MATH_COMPARES = ("is_equiv", "math_verify")  # MATH comparators: they read the raw reference answer
COMPARES = ("exact", *MATH_COMPARES)
BENCHMARKS = ("humaneval", "mbpp")
ENGINES = ("lm_eval", "native")       # who generates for generate/code tasks
GENERATIVE_TYPES = ("generate", "code")

# fields each type needs, and the metrics that make sense for it
REQUIRED = {
    "generate": ["prompt_template", "answer_field", "answer_pattern", "normalizer", "max_new_tokens", "batch_size"],
    "code": ["benchmark", "prompt_template", "max_new_tokens", "batch_size"],
    "lm_eval": ["lm_eval", "batch_size"],
    "classify": ["batch_size"],
    "sequence_classify": ["batch_size", "max_length"],
}
TYPE_METRICS = {
    "generate": ("exact_match", "accuracy"), "code": ("pass@1",), "lm_eval": ("accuracy",), "classify": ("top1",),
    "sequence_classify": ("accuracy", *CORPUS_METRICS),
}


def suite_engine(suite: DictConfig) -> str:
    """Who generates for the suite's ``generate``/``code`` tasks (``native`` where the suite says nothing)."""
    return str(suite.get("engine") or "native")


def _check_engine(suite: DictConfig) -> None:
    engine = suite_engine(suite)
    if engine not in ENGINES:
        raise ConfigError(f"eval suite {suite.get('name')!r}: engine={engine!r}; valid: {sorted(ENGINES)} "
                          f"(e.g. eval.engine=lm_eval)")
    for task in [t for t in suite.tasks if t.get("engine") is not None]:
        raise ConfigError(f"eval task {task.name}: engine is a suite setting (the suite's protocol names it); "
                          f"set eval.engine={task.engine} instead of a per-task engine")
    generative = [t.name for t in suite.tasks if t.type in GENERATIVE_TYPES]
    if generative and not str(suite.protocol).endswith(f"+{engine}"):
        raise ConfigError(f"eval suite {suite.get('name')}: protocol={suite.protocol!r} does not name the engine "
                          f"{engine!r} that generates for {generative}; end it with '+${{.engine}}' (e.g. "
                          f"protocol: my-suite/v1+${{.engine}}) so runs of different engines are never pooled")


def check_suite_fits_model(suite: DictConfig, model: nn.Module, tokenizer: Any) -> None:
    """Checks that need the model, run before training so a misfit fails in seconds, not after the run: under
    the harness, each generative task's ``max_new_tokens`` must leave room for a prompt in the model's positions."""
    if suite_engine(suite) != "lm_eval":
        return
    from loralab.evaluation.lm_eval_generate import context_window

    window = context_window(model, tokenizer)
    for task in [t for t in suite.tasks if t.type in GENERATIVE_TYPES]:
        if window is not None and int(task.max_new_tokens) >= window:
            raise ConfigError(f"eval task {task.name}: max_new_tokens={task.max_new_tokens} leaves no room for a "
                              f"prompt in the model's {window} positions (engine lm_eval); lower "
                              f"eval.tasks.<i>.max_new_tokens below {window}")


def require_code_opt_in(suite: DictConfig) -> None:
    from loralab.evaluation.code_exec import require_opt_in

    require_opt_in(suite.get("allow_code_execution", False))


def _choice(task: DictConfig, key: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ConfigError(f"eval task {task.name}: {key}={value!r}; valid: {sorted(valid)}")


def check_suite(suite: DictConfig) -> None:
    """Protocol errors surface before training, not after it."""
    if not suite.get("protocol"):
        raise ConfigError(f"eval suite {suite.get('name')!r} has no protocol: every suite names its versioned "
                          f"protocol (e.g. protocol: metamath-gsm8k/v1)")
    names = [t.name for t in suite.tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"eval suite {suite.name}: task names {duplicated} appear more than once")
    _check_engine(suite)
    for task in suite.tasks:
        if task.type not in REQUIRED:
            raise ConfigError(f"eval task {task.name}: type={task.type!r}; valid types: {sorted(REQUIRED)}")
        missing = [k for k in REQUIRED[task.type] if task.get(k) is None]
        if missing:
            raise ConfigError(f"eval task {task.name} (type {task.type}) lacks {missing}")
        _choice(task, "metric", task.get("metric"), TYPE_METRICS[task.type])
        if task.type == "generate":
            _choice(task, "normalizer", task.normalizer, list(NORMALIZERS))
            if task.get("gold_normalizer") is not None:
                _choice(task, "gold_normalizer", task.gold_normalizer, list(NORMALIZERS))
            _choice(task, "fallback", task.get("fallback", "last_number"), FALLBACKS)
            _choice(task, "occurrence", task.get("occurrence", "first"), OCCURRENCES)
            _choice(task, "compare", task.get("compare", "exact"), COMPARES)
        if task.type == "code":
            _choice(task, "benchmark", task.benchmark, BENCHMARKS)
            require_code_opt_in(suite)
        if task.type == "lm_eval":
            from loralab.evaluation.lm_eval_engine import HARNESS_METRICS, OUTPUT_TYPES

            _choice(task, "lm_eval.output_type", task.lm_eval.get("output_type", "multiple_choice"), OUTPUT_TYPES)
            _choice(task, "lm_eval.select", task.lm_eval.get("select", "acc"), HARNESS_METRICS)
        if task.type == "sequence_classify":
            for metric in task.get("extra_metrics") or []:
                _choice(task, "extra_metrics", metric, TYPE_METRICS["sequence_classify"])
        if task.get("num_beams") is not None and (not isinstance(task.num_beams, int) or task.num_beams < 1):
            raise ConfigError(f"eval task {task.name}: num_beams={task.num_beams!r}; it must be an integer >= 1")
    harness_lengths = {t.get("max_length") for t in suite.tasks if t.type == "lm_eval"}
    if len(harness_lengths) > 1:
        raise ConfigError(f"eval suite {suite.name}: its lm_eval tasks share one model wrapper, so they need one "
                          f"max_length; got {sorted(harness_lengths, key=str)}")
    if suite.get("aggregate"):
        _choice(suite.tasks[0], "aggregate.metric", suite.aggregate.metric, METRICS)
        if suite.aggregate.name in names:
            raise ConfigError(f"eval suite {suite.name}: aggregate.name={suite.aggregate.name!r} is also a task name")

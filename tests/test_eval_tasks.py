"""The task-type registry: every type a suite may name is one class, registered once, and the suite checks,
the evaluator and the planner all read that registry."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose
from loralab.errors import ConfigError
from loralab.evaluation.checks import check_suite
from loralab.evaluation.tasks import TASK_TYPES, TaskType
from loralab.evaluation.tasks.base import Records, TaskOutput


def test_every_shipped_suite_names_registered_types() -> None:
    used = {t["type"] for f in (ROOT / "conf" / "eval").glob("*.yaml")
            for t in (OmegaConf.load(f).get("tasks") or [])}
    assert used == set(TASK_TYPES) == {"generate", "code", "lm_eval", "sequence_classify", "classify"}
    assert {n for n, c in TASK_TYPES.items() if c.generative} == {"generate", "code"}
    assert all(c.type_name == n and c.metrics for n, c in TASK_TYPES.items())


@pytest.mark.parametrize(("overrides", "phrase"), [
    (["+eval.tasks.0.max_new_token=5"], r"type generate has no field 'max_new_token'; did you mean max_new_tokens\?"),
    (["+eval.tasks.0.answer_pattern=x"], r"\['answer_pattern'\] the answer's reading is a filter chain: filters:"),
    (["eval.tasks.0.filters=null"], r"eval task arith_word_problems \(type generate\) lacks \['filters'\]"),
    (["eval.tasks.0.type=ranking"], r"type='ranking'; valid types: \['classify', 'code', 'generate'"),
    (["eval.tasks.0.metric=pass@1"], r"metric='pass@1'; valid: \['accuracy', 'exact_match'\]"),
])
def test_a_task_is_checked_by_its_type(overrides: list[str], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        check_suite(compose(*overrides).eval)


class _Echo(TaskType):
    """A type whose every sample is right: enough to see who reads the registry."""

    type_name: ClassVar[str] = "echo"
    optional = ("max_new_tokens", "max_length", "num_labels")
    metrics = ("accuracy",)
    generative: ClassVar[bool] = True

    @classmethod
    def run(cls, tasks: Sequence[TaskType], model: Any, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        return {t.name: ([{"correct": True} for _ in records[t.name]], {"echoed": True}) for t in tasks}


def test_checks_evaluator_and_planner_read_one_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from loralab.evaluation.evaluator import evaluate_suite
    from loralab.planning.architectures import ARCHITECTURES
    from loralab.planning.plan import _eval_hours

    monkeypatch.setitem(TASK_TYPES, "echo", _Echo)
    cfg = compose("model=llama3_8b", "dataset=glue_rte", "eval.tasks.0.type=echo", "+eval.tasks.0.max_new_tokens=7",
                  "eval.protocol=echo/v1+native")  # a generative type: the protocol names the engine
    (task,) = check_suite(cfg.eval)
    assert isinstance(task, _Echo)
    scores = evaluate_suite(None, None, cfg.eval, tmp_path, records={"rte": [{}, {}, {}]})
    assert scores["rte"] == {"accuracy": 1.0, "accuracy_stderr": 0.0, "n": 3, "echoed": True}
    # the planner costs a generative type by its decoding steps (here: max_new_tokens), whatever its name
    hours, missing, bases = _eval_hours(cfg, ARCHITECTURES["llama3_8b"], 2, 1e15)
    assert bases == {"max_new_tokens (no answer length on record)": ["rte"]} and hours > 0 and not missing
    monkeypatch.setattr(_Echo, "generative", False)
    assert _eval_hours(cfg, ARCHITECTURES["llama3_8b"], 2, 1e15)[2] == {}


def test_every_generative_task_of_a_suite_decodes_in_one_harness_call(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """A suite with a ``generate`` and a ``code`` task under ``engine: lm_eval`` pays the harness' fixed cost
    once: one call decodes for both types, then each type scores its own generations."""
    from loralab.evaluation import lm_eval_generate
    from loralab.evaluation.evaluator import evaluate_suite

    calls = []

    def generate_tasks(model, tokenizer, jobs, work_dir, batch_size):
        calls.append(sorted(job.name for job in jobs))
        return {job.name: lm_eval_generate.HarnessGenerations(["The answer is: 4"] * len(job.prompts),
                                                              [False] * len(job.prompts), {"engine": "lm_eval"})
                for job in jobs}

    monkeypatch.setattr(lm_eval_generate, "generate_tasks", generate_tasks)
    from loralab.instantiate import build

    code_cfg = compose("dataset=code_feedback", f"eval.tasks.1.data.path={ROOT / 'tests/fixtures/data/mbpp.jsonl'}")
    code = OmegaConf.to_container(code_cfg.eval.tasks[1], resolve=True)
    suite = OmegaConf.to_container(compose("eval.engine=lm_eval").eval, resolve=True)
    suite = OmegaConf.create({**suite, "allow_code_execution": True, "tasks": [*suite["tasks"], code]})
    rows = {"arith_word_problems": [{"question": "Ann has 2 pens. Ann finds 2. How many pens now?", "answer": "4"}],
            "mbpp": list(build(code_cfg.eval.tasks[1].data))[:1]}
    scores = evaluate_suite(None, None, suite, tmp_path, progress=False, records=rows)
    assert calls == [["arith_word_problems", "mbpp"]]
    assert scores["arith_word_problems"]["exact_match"] == 1.0 and scores["mbpp"]["n"] == 1

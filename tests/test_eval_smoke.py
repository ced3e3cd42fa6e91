"""End to end per suite: ``runner.run(compose(...))`` on a tiny model and the fixture files, offline.

The tiny models learn nothing in two steps, so scores are not checked; what is checked is that every suite
runs through the real runner and writes metrics.json with the suite's task names, its protocol and a score
with standard error per task, plus one per-sample record per evaluated row in ``samples/<task>.jsonl``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import compose
from loralab.errors import ConfigError
from loralab.evaluation.evaluator import evaluate_suite
from loralab.io import read_json
from loralab.models.loading import load_model
from loralab.runner import run

DATA = Path(__file__).parent / "fixtures" / "data"
SHORT = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=2", "trainer.save_steps=2",
         "trainer.logging_steps=1"]
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
COMMONSENSE_DATA = [f"eval.tasks.{i}.data.path={DATA / t}.jsonl" for i, t in enumerate(COMMONSENSE)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(name: str) -> int:
    return len((DATA / f"{name}.jsonl").read_text().splitlines())


# suite id → (overrides, {task: (evaluated rows, sample fields)}, extra score keys per task)
GLUE_EXTRAS = {"cola": {"accuracy"}, "stsb": {"spearman"}, "mrpc": {"f1"}, "qqp": {"f1"}}
# the generative suites run on lm-eval by default (engine: lm_eval): samples and scores say so
GENERATE = {"prompt", "generation", "extracted", "gold", "correct", "engine", "truncated"}
CODE = {"prompt", "generation", "extracted", "verdict", "reason", "correct", "engine", "truncated", "isolation"}
HARNESS = {"engine", "lm_eval_version", "truncated_prompts", "harness_max_length"}
SUITES = {
    "metamathqa": (
        ["dataset=metamathqa", f"dataset.train.path={DATA / 'metamathqa.jsonl'}",
         f"eval.tasks.0.data.path={DATA / 'gsm8k.jsonl'}", f"eval.tasks.1.data.path={DATA / 'math.jsonl'}",
         "eval.tasks.0.max_new_tokens=6", "eval.tasks.1.max_new_tokens=6"],
        {"gsm8k": (_rows("gsm8k"), GENERATE), "math": (_rows("math"), GENERATE)},
        {"gsm8k": HARNESS, "math": HARNESS},
    ),
    "code_feedback": (
        ["dataset=code_feedback", f"dataset.train.path={DATA / 'code_feedback.jsonl'}",
         "eval.allow_code_execution=true", "eval.tasks.0.limit=2", f"eval.tasks.1.data.path={DATA / 'mbpp.jsonl'}",
         "eval.tasks.0.max_new_tokens=6", "eval.tasks.1.max_new_tokens=6"],
        {"humaneval": (2, CODE | {"task_id"}), "mbpp": (_rows("mbpp"), CODE)},
        {t: {"allow_code_execution", "isolation", *HARNESS} for t in ("humaneval", "mbpp")},
    ),
    "commonsense170k": (
        ["dataset=commonsense170k", f"dataset.train.path={DATA / 'commonsense170k.jsonl'}", "dataset.max_length=512",
         *COMMONSENSE_DATA, "eval.max_new_tokens=3", "eval.num_beams=2"],
        {t: (_rows(t), GENERATE) for t in COMMONSENSE},
        {t: HARNESS for t in COMMONSENSE},
    ),
    "commonsense8_loglik": (
        ["dataset=commonsense170k", "eval=commonsense8_loglik", f"dataset.train.path={DATA / 'commonsense170k.jsonl'}",
         "dataset.max_length=512", *COMMONSENSE_DATA],
        {t: (_rows(t), {"prompt", "loglikelihoods", "predicted", "gold", "correct"}) for t in COMMONSENSE},
        {t: {"acc", "acc_norm", "engine", "lm_eval_version"} for t in COMMONSENSE},
    ),
    **{f"glue_{t}": (
        ["model=tiny_deberta", f"dataset=glue_{t}", f"dataset.train.path={DATA / f'glue_{t}.jsonl'}",
         *[f"eval.tasks.{i}.data.path={DATA / f'glue_{t}.jsonl'}" for i in range(2 if t == "mnli" else 1)]],
        {n: (_rows(f"glue_{t}"), {"text_a", "gold", "predicted"})
         for n in (["mnli_m", "mnli_mm"] if t == "mnli" else [t])},
        {t: GLUE_EXTRAS[t]} if t in GLUE_EXTRAS else {},
    ) for t in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")},
    **{v: (
        ["model=tiny_vit", f"dataset={v}", f"dataset.train.path={DATA / f'{v}.jsonl'}",
         f"eval.tasks.0.data.path={DATA / f'{v}.jsonl'}"],
        {v: (_rows(v), {"gold", "predicted", "correct"})},
        {},
    ) for v in ("cars", "cub200", "dtd", "food101", "sun397")},
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_runs_end_to_end(suite: str, results_dir: Path) -> None:
    overrides, tasks, extras = SUITES[suite]
    cfg = compose(*overrides, *SHORT, runs_dir=results_dir)
    assert cfg.eval.name == suite
    metrics = run(cfg)
    (run_dir,) = (results_dir / "runs").iterdir()
    assert read_json(run_dir / "metrics.json") == json.loads(json.dumps(metrics, default=str))
    assert metrics["eval"]["suite"] == suite and metrics["eval"]["protocol"] == cfg.eval.protocol
    expected = set(tasks) | ({cfg.eval.aggregate.name} if cfg.eval.get("aggregate") else set())
    assert set(metrics["eval"]["tasks"]) == expected
    for task_cfg in cfg.eval.tasks:
        name, metric = task_cfg.name, task_cfg.metric
        scores = metrics["eval"]["tasks"][name]
        n, fields = tasks[name]
        assert next(iter(scores)) == metric, "the headline metric must come first"
        assert scores["n"] == n and f"{metric}_stderr" in scores
        value = scores[metric]
        assert not math.isnan(value) and (-1.0 <= value <= 1.0)
        assert extras.get(name, set()) <= set(scores), (name, sorted(scores))
        samples = _lines(run_dir / "samples" / f"{name}.jsonl")
        assert len(samples) == n and all(fields <= set(s) for s in samples), (name, sorted(samples[0]))
    if suite == "code_feedback":
        assert all(metrics["eval"]["tasks"][t]["allow_code_execution"] is True for t in ("humaneval", "mbpp"))
    if suite == "commonsense8_loglik":  # the harness input is kept beside the result
        assert (run_dir / "lm_eval" / "boolq" / "loralab_boolq.yaml").is_file()


def test_code_suite_refuses_to_run_without_the_opt_in(results_dir: Path) -> None:
    cfg = compose("dataset=code_feedback", f"dataset.train.path={DATA / 'code_feedback.jsonl'}", *SHORT,
                  runs_dir=results_dir)
    with pytest.raises(ConfigError, match=r"eval\.allow_code_execution=true"):
        run(cfg)
    assert not (results_dir / "runs").exists()


def test_harness_loglikelihoods_are_the_models_own(tmp_path: Path) -> None:
    """lm-eval's numbers for a piqa row equal log P(" " + choice | context) computed here by hand."""
    cfg = compose("dataset=commonsense170k", "eval=commonsense8_loglik", *COMMONSENSE_DATA)
    model, tokenizer = load_model(cfg.model)
    scores = evaluate_suite(model, tokenizer, cfg.eval, tmp_path, progress=False)
    assert scores["piqa"]["n"] == _rows("piqa")
    first = _lines(tmp_path / "samples" / "piqa.jsonl")[0]
    assert first["prompt"] == "Question: To keep bread fresh longer,\nAnswer:"
    assert first["continuations"] == ["store it in a sealed bag.", "leave it in the sun."] and first["gold"] == 0
    for choice, harness_value in zip(first["continuations"], first["loglikelihoods"]):
        context = tokenizer(first["prompt"], add_special_tokens=False)["input_ids"]
        whole = tokenizer(first["prompt"] + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
        by_hand = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole)))
        assert harness_value == pytest.approx(by_hand, abs=1e-3)
    assert first["predicted"] == max(range(2), key=lambda i: first["loglikelihoods"][i])


def test_beam_search_does_not_depend_on_the_batch() -> None:
    """LLM-Adapters' protocol decodes with 4 beams; left padding must keep beams per prompt independent."""
    from loralab.synthetic.arithmetic import ALPHABET
    from loralab.evaluation.generation import generate_greedy
    from loralab.models.embedded_lm import char_tokenizer
    from loralab.models.tiny import tiny_llama

    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=5)
    prompts = ["Q: Ann has 3 pens.", "1+1=", "Leo has 12 keys. Leo finds 7. How many keys now?", "9-4="]
    alone = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=1, progress=False, num_beams=4)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, progress=False, num_beams=4)
    greedy = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, progress=False)
    assert alone == batched
    assert batched != greedy  # the beams are really searched (a random model's greedy path is not the best one)

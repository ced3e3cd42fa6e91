"""Every shipped suite, end to end through ``evaluate_suite`` on the embedded models, against the records the
evaluator wrote before task types became classes and answer readings filter chains
(``tests/fixtures/golden/pipeline.json``).

Each case loads the embedded model its suite runs on (``tiny_lm`` for the text suites, ``tiny_deberta`` for
GLUE, ``tiny_vit`` for images), evaluates a few fixture rows and keeps every per-sample record
(``samples/<task>.jsonl``: prompt, generation, extracted answer, reference, verdict, ...), every task's scores,
and the harness task each ``generate`` task exports (its targets and ``filter_list``). Generative suites run
under both engines. Regenerate the file only on purpose, with the code whose behaviour it pins::

    python tests/test_eval_golden_pipeline.py tests/fixtures/golden/pipeline.json
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose  # noqa: E402

DATA = Path(__file__).parent / "fixtures" / "data"
GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "pipeline.json"
COMMONSENSE = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
COMMONSENSE_DATA = [f"eval.tasks.{i}.data.path={DATA / t}.jsonl" for i, t in enumerate(COMMONSENSE)]
COMMONSENSE_SHORT = [f"eval.tasks.{i}.limit=2" for i in range(len(COMMONSENSE))]
METAMATH = ["dataset=metamathqa", f"eval.tasks.0.data.path={DATA / 'gsm8k.jsonl'}",
            f"eval.tasks.1.data.path={DATA / 'math.jsonl'}", "eval.tasks.0.limit=3", "eval.tasks.1.limit=3",
            "eval.tasks.0.max_new_tokens=40", "eval.tasks.1.max_new_tokens=40"]
CODE = ["dataset=code_feedback", "eval.allow_code_execution=true", f"eval.tasks.0.data.path={DATA / 'humaneval.jsonl'}",
        f"eval.tasks.1.data.path={DATA / 'mbpp.jsonl'}", "eval.tasks.0.limit=2", "eval.tasks.1.limit=2",
        "eval.tasks.0.max_new_tokens=24", "eval.tasks.1.max_new_tokens=24"]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
VISION = ["cars", "cub200", "dtd", "food101", "sun397"]
# case → the overrides that compose it (the embedded default is the config with no overrides)
CASES: dict[str, list[str]] = {
    "arith_shift+native": ["eval.tasks.0.data.n=12"],
    "arith_shift+lm_eval": ["eval.tasks.0.data.n=12", "eval.engine=lm_eval"],
    "metamathqa+lm_eval": METAMATH,
    "metamathqa+native": [*METAMATH, "eval.engine=native"],
    "metamathqa_mathverify+lm_eval": [*METAMATH, "eval=metamathqa_mathverify"],
    "code_feedback+lm_eval": CODE,
    "code_feedback+native": [*CODE, "eval.engine=native"],
    "commonsense170k+lm_eval": ["dataset=commonsense170k", *COMMONSENSE_DATA, *COMMONSENSE_SHORT,
                                "eval.max_new_tokens=8"],
    "commonsense170k+native": ["dataset=commonsense170k", *COMMONSENSE_DATA, *COMMONSENSE_SHORT,
                               "eval.max_new_tokens=8", "eval.engine=native", "eval.num_beams=1"],
    "commonsense8_loglik": ["dataset=commonsense170k", "eval=commonsense8_loglik", *COMMONSENSE_DATA,
                            *COMMONSENSE_SHORT],
    **{f"glue_{t}": ["model=tiny_deberta", f"dataset=glue_{t}",
                     *[f"eval.tasks.{i}.data.path={DATA / f'glue_{t}.jsonl'}" for i in range(2 if t == "mnli" else 1)]]
       for t in GLUE},
    **{v: ["model=tiny_vit", f"dataset={v}", f"eval.tasks.0.data.path={DATA / f'{v}.jsonl'}"] for v in VISION},
    "digits_shift": ["model=tiny_vit", "dataset=digits_shift", "+eval.tasks.0.limit=8"],
}
# what depends on the machine, not on the evaluation: the sandbox's isolation mode, the harness' version
MACHINE = {"isolation", "isolation_note", "lm_eval_version"}


def _portable(value: Any, out_dir: str) -> Any:
    """``value`` with the run directory's path as ``<out>``, machine-dependent keys dropped, floats rounded
    (log-likelihoods and regression outputs; the rounding keeps 9 significant digits)."""
    if isinstance(value, dict):
        return {k: _portable(v, out_dir) for k, v in value.items() if k not in MACHINE}
    if isinstance(value, list):
        return [_portable(v, out_dir) for v in value]
    if isinstance(value, str):
        return value.replace(out_dir, "<out>")
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.9g}")
    return value


def _exported(out_dir: Path) -> dict[str, Any]:
    """Each exported harness task: its YAML and its rows (the targets the exported metric compares with)."""
    import yaml

    class Loader(yaml.SafeLoader):  # the harness' ``!function`` tag, kept as written
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    exported = {}
    for task_yaml in sorted((out_dir / "lm_eval").glob("*/loralab_*.yaml")):
        rows = [json.loads(line) for line in (task_yaml.parent / "docs.jsonl").read_text().splitlines()] \
            if (task_yaml.parent / "docs.jsonl").is_file() else None
        exported[task_yaml.parent.name] = {"yaml": yaml.load(task_yaml.read_text(), Loader), "rows": rows}
    return exported


def evaluate_case(case: str, out_dir: Path) -> dict[str, Any]:
    """What the evaluator writes for ``case``: per-task samples, the scores and the exported harness tasks."""
    from transformers import set_seed

    from loralab.evaluation.evaluator import evaluate_suite
    from loralab.models.loading import load_model

    cfg = compose(*CASES[case])
    # a classification head the cached model lacks (a vision suite's classes, GLUE's labels) is drawn from the
    # global generator: fixed here, so the records do not depend on which tests ran before in this process
    set_seed(0)
    model, tokenizer = load_model(cfg.model, num_labels=cfg.dataset.get("num_labels"))
    scores = evaluate_suite(model, tokenizer, cfg.eval, out_dir, progress=False)
    samples = {t.name: [json.loads(line) for line in (out_dir / "samples" / f"{t.name}.jsonl").read_text().splitlines()]
               for t in cfg.eval.tasks}
    return _portable({"scores": scores, "samples": samples, "exported": _exported(out_dir)}, str(out_dir))


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", list(CASES))
def test_suite_evaluates_as_before(case: str, golden: dict[str, Any], tmp_path: Path,
                                   one_compute_thread: None) -> None:
    now = json.loads(json.dumps(evaluate_case(case, tmp_path), default=str))
    before = golden[case]
    assert sorted(now["samples"]) == sorted(before["samples"])
    for task, samples in before["samples"].items():
        assert len(now["samples"][task]) == len(samples) > 0, task
        for i, (new, old) in enumerate(zip(now["samples"][task], samples)):
            assert new == old, (task, i)
    assert now["scores"] == before["scores"]
    assert now["exported"] == before["exported"]


def test_every_shipped_suite_has_a_golden_case() -> None:
    root = Path(__file__).parents[1]
    suites = {p.stem for p in (root / "conf" / "eval").glob("*.yaml")}
    assert suites == {c.split("+")[0] for c in CASES}


if __name__ == "__main__":  # write the golden file with the code on the path
    import torch

    torch.set_num_threads(1)
    records = {}
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            records[name] = json.loads(json.dumps(evaluate_case(name, Path(tmp)), default=str))
        print(name, {t: s for t, s in records[name]["scores"].items()}, flush=True)
    Path(sys.argv[1]).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n", encoding="utf-8")

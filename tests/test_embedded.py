"""The embedded default end to end: a method must measurably learn the shifted task (text and vision)."""
from pathlib import Path

import pytest

from conftest import compose
from loralab.evaluation.evaluator import evaluate_suite
from loralab.io import read_json
from loralab.models.loading import load_model
from loralab.runner import run


def _base_score(cfg, tmp_path: Path) -> float:
    """The un-adapted base model through the same evaluator."""
    model, tokenizer = load_model(cfg.model, num_labels=cfg.dataset.get("num_labels"))
    (task,) = cfg.eval.tasks
    return evaluate_suite(model, tokenizer, cfg.eval, tmp_path / "base", progress=False)[task.name][task.metric]


@pytest.mark.slow
def test_lora_learns_the_arithmetic_shift(results_dir: Path, tmp_path: Path) -> None:
    cfg = compose(runs_dir=results_dir)
    metrics = run(cfg)
    adapted = metrics["eval"]["tasks"]["arith_word_problems"]["exact_match"]
    base = _base_score(cfg, tmp_path)
    assert base < 0.2, f"the shift is not a shift: the base already scores {base:.2f}"
    assert adapted >= base + 0.5, f"LoRA did not learn the task: {adapted:.2f} vs base {base:.2f}"

    run_dir = next((results_dir / "runs").iterdir())
    for name in ("config.yaml", "metrics.json", "steps.jsonl", "status.json", "samples/arith_word_problems.jsonl",
                 "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    saved = read_json(run_dir / "metrics.json")
    assert saved["eval"]["protocol"] == cfg.eval.protocol
    assert {"git", "packages", "hardware"} <= set(saved["provenance"])
    assert saved["cost"]["trainable_params"] > 0 and saved["cost"]["adapter_bytes"] > 0
    assert saved["train"]["steps"] == cfg.trainer.max_steps

    # Same config again: the finished run is found and not recomputed.
    again = run(cfg)
    assert again == saved


@pytest.mark.slow
def test_lora_learns_the_digits_shift(results_dir: Path, tmp_path: Path) -> None:
    cfg = compose("model=tiny_vit", "dataset=digits_shift", runs_dir=results_dir)
    adapted = run(cfg)["eval"]["tasks"]["digits_5_to_9"]["top1"]
    base = _base_score(cfg, tmp_path)
    assert adapted >= base + 0.4, f"{adapted:.2f} vs base {base:.2f}"

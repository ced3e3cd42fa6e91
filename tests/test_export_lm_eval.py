"""A real finished run, exported ``merged``, evaluated by the ``lm_eval`` CLI itself gives loralab's score.

``python run.py`` (the embedded default, shrunk; generation by lm-evaluation-harness) → ``python -m
loralab.export --format merged`` → ``AutoModelForCausalLM.from_pretrained`` (logits equal to the run's own
model: the base with its adapter) → ``lm_eval --model hf --model_args pretrained=<merged dir> --include_path
<run>/lm_eval`` over the task YAML the run exported. The CLI generates exactly what loralab generated for every
sample, and those generations, scored by loralab's extraction, give the score in the run's metrics.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT
from loralab.evaluation.checks import check_suite
from loralab.evaluation.evaluator import load_suite_records
from loralab.evaluation.extraction import truncate_at_stop
from loralab.evaluation.metrics import mean_and_stderr
from loralab.io import read_json
from loralab.models.loading import load_model

TASK = "arith_word_problems"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_lm_eval_cli_on_the_merged_export_reproduces_the_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_cmd = [sys.executable, "run.py", "trainer.max_steps=30", "trainer.per_device_train_batch_size=16",
               "eval.engine=lm_eval", "eval.tasks.0.data.n=16", "progress=false", f"paths.results_dir={results}"]
    done = subprocess.run(run_cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (results / "runs").iterdir()
    metrics = read_json(run_dir / "metrics.json")

    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "loralab.export", str(run_dir), "--format", "merged",
                           "--out", str(merged)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # 1. transformers loads it alone; its logits are the run's model's (the base with the run's adapter)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    base, _ = load_model(cfg.model)
    reference = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    loaded = AutoModelForCausalLM.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer(["Q: Ann has 9 rocks. Ann buys 6. How many rocks now?\nA:"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, atol=3e-5, rtol=1e-4)

    # 2. the lm_eval CLI on the merged folder, the run's exported task YAML, loralab's batch size
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    task_id = f"loralab_{TASK}"
    batch_size = str(cfg.eval.tasks[0].batch_size)
    done = subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={merged},dtype=float32",
                           "--tasks", task_id, "--include_path", str(run_dir / "lm_eval"), "--device", "cpu",
                           "--batch_size", batch_size, "--log_samples", "--output_path", str(tmp_path / "lm_eval")],
                          cwd=tmp_path, env={**ENV, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples_file,) = (tmp_path / "lm_eval").rglob(f"samples_{task_id}_*.jsonl")
    cli = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])

    ours = [json.loads(line) for line in (run_dir / "samples" / f"{TASK}.jsonl").read_text().splitlines()]
    (task,) = check_suite(cfg.eval)
    cli_generations = [truncate_at_stop(str(s["resps"][0][0]), task.stop) for s in cli]
    assert len(cli_generations) == len(ours) == metrics["eval"]["tasks"][TASK]["n"] == 16
    assert cli_generations == [s["generation"] for s in ours]

    records = load_suite_records(cfg.eval)[TASK]
    samples, _ = task.score(records, [task.prompt(r) for r in records], cli_generations)
    score, stderr = mean_and_stderr([s["correct"] for s in samples])
    assert score == metrics["eval"]["tasks"][TASK]["exact_match"]
    assert stderr == metrics["eval"]["tasks"][TASK]["exact_match_stderr"]

"""The recipe: one run = load → adapt → train → save → evaluate → record. Read it top to bottom.

Everything that varies between experiments is configuration (``conf/``); this file only sequences it.
Nothing is written to the run directory until the configuration, model, method and data have been checked,
so a bad input leaves no half-written results behind.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from loralab.instantiate import build
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from loralab.data.build import training_examples
from loralab.errors import ConfigError
from loralab.evaluation.evaluator import check_suite, evaluate_suite, load_suite_records
from loralab.io import atomic_write_json, atomic_write_text, read_json
from loralab.methods.base import Method, count_trainable
from loralab.models.loading import load_model
from loralab.provenance import git_state, hardware, package_versions, peak_memory_bytes
from loralab.rundir import RunDir, config_hash
from loralab.training.trainer import build_trainer, last_checkpoint, training_arguments

log = logging.getLogger("loralab")


def check_config(cfg: DictConfig) -> None:
    """Checks that need no model; the method re-checks rank against the model's actual shapes."""
    if not isinstance(cfg.rank, int) or isinstance(cfg.rank, bool) or cfg.rank <= 0:
        raise ConfigError(f"rank={cfg.rank!r} is invalid: rank must be a positive integer (e.g. rank=8)")
    if not isinstance(cfg.alpha, (int, float)) or cfg.alpha <= 0:
        raise ConfigError(f"alpha={cfg.alpha!r} is invalid: alpha must be a positive number (e.g. alpha=16)")
    if cfg.trainer.get("bf16") and not torch.cuda.is_available() and not cfg.get("allow_cpu_bf16", False):
        raise ConfigError(
            "trainer.bf16=true needs a CUDA GPU and none is visible; use trainer.bf16=false on this machine"
        )
    check_suite(cfg.eval)


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.time()
    check_config(cfg)
    run_dir = RunDir.for_config(cfg)
    if cfg.force_rerun:
        run_dir.clear()  # a forced re-run starts from scratch, not from the old run's checkpoints
    elif run_dir.is_finished():
        log.info("already finished, skipping: %s", run_dir.path)
        return read_json(run_dir.metrics_file)
    set_seed(cfg.seed)

    # 1. model, method, data — all checked before anything is written
    num_labels = cfg.dataset.get("num_labels")
    model, tokenizer = load_model(cfg.model, num_labels=num_labels)
    method: Method = build(cfg.method, _convert_="all")
    targets = list(cfg.method.get("target_modules") or cfg.model.target_modules)
    method.validate(model, targets)
    examples, collator = training_examples(cfg.dataset, tokenizer)
    eval_records = load_suite_records(cfg.eval)
    total_params = sum(p.numel() for p in model.parameters())

    def calibration():  # a few training batches for data-driven initialisations (LoRA-GA, CorDA)
        batch = int(cfg.trainer.per_device_train_batch_size)
        for start in range(0, min(len(examples), batch * int(cfg.get("calibration_batches", 4))), batch):
            yield collator(examples[start:start + batch])

    model = method.prepare(model, targets, list(cfg.model.get("modules_to_save") or []), calibration)
    trainable = count_trainable(model)

    # 2. train (resuming from the last checkpoint of an interrupted run)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    resume_from = last_checkpoint(run_dir.checkpoints)
    run_dir.mark("running", resumed_from=resume_from)
    if resume_from:
        log.info("resuming from %s", resume_from)
    report_to = list(cfg.logger.report_to)
    _configure_wandb(cfg, run_dir.path, report_to)
    args = training_arguments(cfg.trainer, run_dir.checkpoints, cfg.seed, report_to, cfg.progress)
    trainer = build_trainer(model, method, args, examples, collator, run_dir.path / "steps.jsonl")
    train_output = trainer.train(resume_from_checkpoint=resume_from)

    # 3. save the trained weights, then evaluate
    weights = method.save(trainer.model, run_dir.path / "adapter")
    scores = evaluate_suite(trainer.model, tokenizer, cfg.eval, run_dir.path, cfg.progress, eval_records)

    # 4. record
    metrics = {
        "run": {
            "name": run_dir.path.name, "config_hash": config_hash(cfg), "model": cfg.model.name,
            "method": cfg.method.name, "rank": cfg.rank, "alpha": cfg.alpha, "dataset": cfg.dataset.name,
            "seed": cfg.seed, "smoke": bool(cfg.get("smoke", False)),
        },
        "eval": {"suite": cfg.eval.name, "protocol": cfg.eval.protocol, "tasks": scores},
        "train": {
            "steps": train_output.global_step, "final_loss": train_output.training_loss,
            "resumed_from": resume_from,
        },
        "cost": {
            "wall_time_s": round(time.time() - started, 2), "peak_memory_bytes": peak_memory_bytes(),
            "trainable_params": trainable, "total_params": total_params,
            "adapter_bytes": Path(weights).stat().st_size,
        },
        "provenance": {"git": git_state(), "packages": package_versions(), "hardware": hardware()},
    }
    atomic_write_json(run_dir.metrics_file, metrics)
    run_dir.mark("finished")
    log.info("finished %s: %s", run_dir.path.name, {t: _headline(s) for t, s in scores.items()})
    return metrics


def _headline(task_scores: dict[str, float]) -> str:
    metric = next(k for k in task_scores if not k.endswith("_stderr") and k != "n")
    return f"{metric}={task_scores[metric]:.4f} ± {task_scores[metric + '_stderr']:.4f} (n={task_scores['n']})"


def _configure_wandb(cfg: DictConfig, run_dir: Path, report_to: list[str]) -> None:
    """wandb logs offline unless credentials exist, so the default never needs the network."""
    if "wandb" not in report_to:
        return
    has_credentials = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _netrc_text()
    os.environ.setdefault("WANDB_MODE", "online" if has_credentials else "offline")
    os.environ.setdefault("WANDB_PROJECT", str(cfg.logger.get("project", "loralab")))
    os.environ.setdefault("WANDB_DIR", str(run_dir))


def _netrc_text() -> str:
    netrc = Path.home() / ".netrc"
    return netrc.read_text(errors="ignore") if netrc.exists() else ""

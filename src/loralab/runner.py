"""The recipe: one run = load → adapt → train → save → evaluate → record. Read it top to bottom.

Everything that varies between experiments is configuration (``conf/``); this file only sequences it.
Nothing is written to the run directory until the configuration, model, method and data have been checked,
so a bad input leaves no half-written results behind. Launched on several processes (``torchrun``), every
rank trains and only the main process writes, saves and evaluates (``distributed.on_main``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from loralab.instantiate import build
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from loralab import distributed
from loralab.checksums import write_manifest
from loralab.data.build import training_examples
from loralab.errors import ConfigError
from loralab.evaluation.checks import check_suite, check_suite_fits_model
from loralab.evaluation.evaluator import evaluate_suite, load_suite_records
from loralab.io import atomic_write_dir, atomic_write_json, atomic_write_text
from loralab.lr_source import check_learning_rate
from loralab.methods.base import Method, calibration_batches, count_trainable
from loralab.models.loading import load_model, model_provenance
from loralab.provenance import git_state, hardware, package_versions, peak_memory_bytes
from loralab.reports.curves import write_curves
from loralab.rundir import LOG_FILE, RunDir, appending_log, config_hash
from loralab.tracking import track_run
from loralab.training.checkpoints import resumable_checkpoint
from loralab.training.callbacks import StepLogCallback
from loralab.training.diagnostics import diagnostics_callback, summarise
from loralab.training.heldout import heldout_loss, proxy_split
from loralab.training.parallelism import check_launch
from loralab.training.termination import Terminated, TerminationFlag, graceful_termination
from loralab.training.trainer import build_trainer, loss_summary, train_or_restore, training_arguments
from loralab.validation import (check_seed, check_template_syntax, check_templates_fill, check_trainer,
                                check_training_arguments)

log = logging.getLogger("loralab")


def check_config(cfg: DictConfig) -> None:
    """Checks that need no model; the method re-checks rank against the model's actual shapes."""
    if not isinstance(cfg.rank, int) or isinstance(cfg.rank, bool) or cfg.rank <= 0:
        raise ConfigError(f"rank={cfg.rank!r} is invalid: rank must be a positive integer (e.g. rank=8)")
    if not isinstance(cfg.alpha, (int, float)) or cfg.alpha <= 0:
        raise ConfigError(f"alpha={cfg.alpha!r} is invalid: alpha must be a positive number (e.g. alpha=16)")
    check_seed(cfg.seed)
    check_trainer(cfg.trainer)
    if cfg.trainer.get("bf16") and not torch.cuda.is_available() and not cfg.get("allow_cpu_bf16", False):
        raise ConfigError(
            "trainer.bf16=true needs a CUDA GPU and none is visible; use trainer.bf16=false on this machine"
        )
    check_learning_rate(cfg)  # a paper table's cell runs at a labelled learning rate (PAPER/INFERRED/TUNED)
    check_suite(cfg.eval)
    check_template_syntax(cfg)


def run(cfg: DictConfig) -> dict[str, Any]:
    with contextlib.ExitStack() as held:  # the run directory's lock and log file, released however the run ends
        return _run(cfg, held)


def _run(cfg: DictConfig, held: contextlib.ExitStack) -> dict[str, Any]:
    started = time.time()
    check_config(cfg)
    method: Method = build(cfg.method, _convert_="all")
    check_launch(method, cfg.trainer)  # FSDP/DeepSpeed, or a setting DDP breaks: refused before anything runs
    distributed.setup(cfg.trainer)  # joins the launcher's process group (torchrun); alone, nothing
    run_dir = RunDir.for_config(cfg)
    # transformers' own checks of the trainer options together; after setup, as they set up the devices
    check_training_arguments(lambda: training_arguments(cfg.trainer, run_dir.checkpoints, cfg.seed,
                                                        list(cfg.logger.report_to), cfg.progress))
    distributed.on_main(run_dir.check_unlocked)  # another process is on this config: stop before loading anything
    if not cfg.force_rerun and distributed.on_main(run_dir.is_finished):
        metrics = distributed.on_main(run_dir.finished_metrics)  # a damaged record stops here, naming the file
        log.info("already finished, skipping: %s", run_dir.path)
        return metrics
    set_seed(cfg.seed)

    # 1. model, method, data — all checked before anything is written
    num_labels = cfg.dataset.get("num_labels")
    model, tokenizer = load_model(cfg.model, num_labels=num_labels)
    targets = list(cfg.method.get("target_modules") or cfg.model.target_modules)
    method.validate(model, targets)
    examples, collator = training_examples(cfg.dataset, tokenizer)
    examples, heldout = proxy_split(examples, cfg.get("proxy"), cfg.dataset.name)  # tune-lr proxy runs only
    eval_records = load_suite_records(cfg.eval)
    check_templates_fill(cfg.eval, eval_records)
    check_suite_fits_model(cfg.eval, model, tokenizer)
    total_params = sum(p.numel() for p in model.parameters())

    # data-driven initialisations (LoRA-GA, CorDA) get exactly the training examples they declare, or the run
    # stops; the same on every rank, whatever the batch size or number of processes
    request = method.calibration_request()
    calibration = calibration_batches(request, examples, collator, cfg.method.name) if request else None

    model = method.prepare(model, targets, list(cfg.model.get("modules_to_save") or []), calibration)
    trainable = count_trainable(model)

    # 2. train (resuming from the last complete checkpoint of an interrupted run)
    finished = distributed.on_main(_hold_run_dir, cfg, run_dir, held)
    if finished is not None:
        log.info("already finished, skipping: %s", run_dir.path)
        return finished
    attempt = distributed.on_main(_open_run_dir, cfg, run_dir)
    if distributed.is_main_process():
        held.enter_context(appending_log(run_dir.path / LOG_FILE))
    progress: dict[str, Any] = {}  # filled as training goes, so a failure can say where it happened
    try:
        # SIGTERM: checkpoint after the current step, then stop; the tracker is finished on every way out
        with graceful_termination() as termination, track_run(cfg, run_dir.path) as tracker:
            metrics = _train_evaluate_record(cfg, run_dir, method, model, tokenizer, examples, collator,
                                             eval_records, started, trainable, total_params, attempt, progress,
                                             termination, heldout)
            tracker.log_result(metrics)
    except BaseException as err:
        # Whatever stops a run after its directory exists is recorded there, so no run is left "running";
        # the exception still propagates (the CLI turns LoralabErrors into one line and a non-zero exit).
        state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        trainer = progress.get("trainer")
        if distributed.is_main_process():
            run_dir.mark(state, attempt=attempt, error=f"{type(err).__name__}: {err}",
                         completed_steps=trainer.state.global_step if trainer is not None else None,
                         stage=progress.get("stage"), resumed_from=progress.get("resumed_from"),
                         failed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        raise
    if distributed.is_main_process():
        run_dir.mark("finished", attempt=attempt, resumed_from=metrics["train"]["resumed_from"])
        log.info("finished %s: %s", run_dir.path.name,
                 {t: _headline(s) for t, s in metrics["eval"]["tasks"].items()})
    return metrics


def _hold_run_dir(cfg: DictConfig, run_dir: RunDir, held: contextlib.ExitStack) -> dict[str, Any] | None:
    """Lock the run directory for the rest of the run, from its first write on (a second process on this
    config stops there, naming this one); the metrics if another process finished it while this one loaded."""
    held.enter_context(run_dir.locked())
    if not cfg.force_rerun and run_dir.is_finished():
        return run_dir.finished_metrics()
    return None


def _open_run_dir(cfg: DictConfig, run_dir: RunDir) -> int:
    """Create (after a forced re-run: empty) the run directory, record the config; returns the attempt."""
    if cfg.force_rerun:
        # a forced re-run starts from scratch, not from the old run's checkpoints; cleared only now, so a
        # forced re-run that fails its checks leaves the previous results in place
        run_dir.clear()
    run_dir.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    attempt = int(run_dir.status().get("attempt", 0)) + 1
    # pid/host let a reader tell a live run from one killed without a chance to record it (kill -9, OOM)
    run_dir.mark("running", attempt=attempt, pid=os.getpid(), host=socket.gethostname())
    return attempt


def _train_evaluate_record(cfg: DictConfig, run_dir: RunDir, method: Method, model: torch.nn.Module,
                           tokenizer: Any, examples: Any, collator: Any, eval_records: Any, started: float,
                           trainable: int, total_params: int, attempt: int,
                           progress: dict[str, Any], termination: TerminationFlag,
                           heldout: Any = None) -> dict[str, Any]:
    progress["stage"] = "resume"
    resume_from, skipped = distributed.on_main(_resume_point, run_dir, attempt)
    progress["resumed_from"] = resume_from
    if resume_from:
        log.info("resuming from %s", resume_from)
    report_to = list(cfg.logger.report_to)
    args = training_arguments(cfg.trainer, run_dir.checkpoints, cfg.seed, report_to, cfg.progress)
    step_log = StepLogCallback(run_dir.path / "steps.jsonl")
    diagnostics = diagnostics_callback(cfg.get("diagnostics") or {}, step_log, report_to)
    trainer = build_trainer(model, method, args, examples, collator, step_log,
                            extra_callbacks=[diagnostics] if diagnostics else (), termination=termination)
    progress.update(stage="train", trainer=trainer)
    train_output = train_or_restore(trainer, resume_from)
    if termination.requested:  # the Trainer saved a checkpoint at this step and stopped early
        raise Terminated(f"received SIGTERM; stopped after step {trainer.state.global_step} and saved a "
                         "checkpoint there: run the same command again to resume")

    # the lr-selection proxy's score, on every rank (the Trainer's evaluation loop gathers across processes)
    train_extra = {"heldout_loss": heldout_loss(trainer, heldout)} if heldout is not None else {}

    # 3.-4. on the main process only, the other ranks waiting: save, evaluate, record
    return distributed.on_main(_save_evaluate_record, cfg, run_dir, method, trainer, train_output, tokenizer,
                               eval_records, started, trainable, total_params, resume_from, skipped, progress,
                               diagnostics, train_extra)


def _resume_point(run_dir: RunDir, attempt: int) -> tuple[str | None, list[Any]]:
    resume_from, skipped = resumable_checkpoint(run_dir.checkpoints)
    run_dir.mark("running", attempt=attempt, pid=os.getpid(), host=socket.gethostname(),
                 resumed_from=resume_from, skipped_checkpoints=[s.describe() for s in skipped])
    return resume_from, skipped


def _save_evaluate_record(cfg: DictConfig, run_dir: RunDir, method: Method, trainer: Any, train_output: Any,
                          tokenizer: Any, eval_records: Any, started: float, trainable: int, total_params: int,
                          resume_from: str | None, skipped: list[Any], progress: dict[str, Any],
                          diagnostics: Any, train_extra: dict[str, Any]) -> dict[str, Any]:
    # 3. save the trained weights (swapped in whole, never half-written), then evaluate
    progress["stage"] = "save"
    weights = atomic_write_dir(run_dir.path / "adapter", lambda out: _save_sealed(method, trainer.model, out))
    progress["stage"] = "evaluate"
    scores = evaluate_suite(trainer.model, tokenizer, cfg.eval, run_dir.path, cfg.progress, eval_records)

    # 4. record
    processes = distributed.world_size()
    metrics = {
        "run": {
            "name": run_dir.path.name, "config_hash": config_hash(cfg), "model": cfg.model.name,
            "method": cfg.method.name, "rank": cfg.rank, "alpha": cfg.alpha, "dataset": cfg.dataset.name,
            "seed": cfg.seed, "smoke": bool(cfg.get("smoke", False)),
            # processes and examples per optimiser step: runs differing in either are different runs
            "world_size": processes, "global_train_batch": distributed.global_train_batch(cfg.trainer, processes),
        },
        "eval": {"suite": cfg.eval.name, "protocol": cfg.eval.protocol, "tasks": scores},
        "train": {
            "steps": train_output.global_step,
            # final_loss / mean_loss come from the log history, which a resume restores, so they match an
            # uninterrupted run; the Trainer's own average covers only this process's steps (None if none).
            **loss_summary(trainer.state.log_history),
            "session_mean_loss": train_output.training_loss,
            "resumed_from": resume_from,
            "skipped_checkpoints": [s.describe() for s in skipped],
            "calibration": request.record() if (request := method.calibration_request()) else None,
            "init": method.init_summary(),
            **train_extra,
        },
        "cost": {
            "wall_time_s": round(time.time() - started, 2), "peak_memory_bytes": peak_memory_bytes(),
            "trainable_params": trainable, "total_params": total_params,
            "adapter_bytes": Path(weights).stat().st_size,
        },
        "diagnostics": summarise(diagnostics),
        "provenance": {"git": git_state(), "packages": package_versions(), "hardware": hardware(),
                       "model": model_provenance(cfg.model)},
    }
    write_curves(run_dir.path)  # curves.png from steps.jsonl: loss, learning rate, diagnostics
    atomic_write_json(run_dir.metrics_file, metrics)
    return metrics


def _save_sealed(method: Method, model: torch.nn.Module, out: Path) -> Any:
    """The adapter's files, then their checksums (checked before a finished run is trusted)."""
    weights = method.save(model, out)
    write_manifest(out)
    return weights


def _headline(task_scores: dict[str, float]) -> str:
    metric = next(k for k in task_scores if not k.endswith("_stderr") and k != "n")
    return f"{metric}={task_scores[metric]:.4f} ± {task_scores[metric + '_stderr']:.4f} (n={task_scores['n']})"


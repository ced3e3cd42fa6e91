"""The recipe: one run = check → load → adapt → resume → train → save → evaluate (and record). Read
:class:`TrainEvaluateRecipe` top to bottom; :func:`run` is the entry point.

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
from loralab.data.training_data import training_examples
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
from loralab.training.diagnostics_callback import diagnostics_callback, summarise
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
    """Run ``cfg`` (skipped when this exact config already finished); its metrics.json as a dict."""
    with contextlib.ExitStack() as held:  # the run directory's lock and log file, released however the run ends
        return TrainEvaluateRecipe(cfg, held).run()


class TrainEvaluateRecipe:
    """One run of one config, its stages in the order :meth:`run` calls them.

    Before the run directory exists: :meth:`check` (the config alone), :meth:`load` (model, method, data and
    suite, each checked) and :meth:`adapt` (calibrate data-driven inits, wrap the model). Then
    :meth:`open_run_dir` takes the directory, where the :data:`STAGES` follow: :meth:`resume`, :meth:`train`,
    :meth:`save` and :meth:`evaluate` (which records metrics.json). A run that stops in one of them says so in
    ``status.json``: the stage's name, the steps completed and the checkpoint it resumed from.
    """

    #: The stages that run inside the run directory, in order: ``status.json``'s ``stage`` of a failed run.
    STAGES: tuple[str, ...] = ("resume", "train", "save", "evaluate")

    # set by check(), load() and adapt(), before anything is written
    run_dir: RunDir
    method: Method
    model: torch.nn.Module
    tokenizer: Any
    examples: Any
    collator: Any
    heldout: Any                 # the lr-selection proxy's held-out split (tune-lr proxy runs only), else None
    eval_records: Any
    targets: list[str]
    total_params: int
    trainable: int
    # set by open_run_dir() and the stages
    attempt: int
    resume_from: str | None = None
    skipped: list[Any]
    termination: TerminationFlag
    trainer: Any = None
    train_output: Any
    train_extra: dict[str, Any]
    diagnostics: Any

    def __init__(self, cfg: DictConfig, held: contextlib.ExitStack) -> None:
        self.cfg = cfg
        self.held = held                      # the run directory's lock and log file, released by run()
        self.started = time.time()
        self.stage: str | None = None         # the stage running now, named on failure

    def run(self) -> dict[str, Any]:
        self.check()
        if (done := self.finished_before()) is not None:
            return done
        set_seed(self.cfg.seed)
        self.load()
        self.adapt()
        if (done := self.open_run_dir()) is not None:
            return done
        try:
            # SIGTERM: checkpoint after the current step, then stop; the tracker is finished on every way out
            with graceful_termination() as self.termination, track_run(self.cfg, self.run_dir.path) as tracker:
                self.resume()
                self.train()
                # on the main process only, the other ranks waiting: save, evaluate, record
                metrics = distributed.on_main(self._save_and_evaluate)
                tracker.log_result(metrics)
        except BaseException as err:
            self.record_failure(err)
            raise
        self.record_finished(metrics)
        return metrics

    # --- before the run directory exists: nothing is written ---

    def check(self) -> None:
        """The config, the method's launch and transformers' trainer options; joins the process group."""
        cfg = self.cfg
        check_config(cfg)
        self.method = build(cfg.method, _convert_="all")
        check_launch(self.method, cfg.trainer)  # FSDP/DeepSpeed, or a setting DDP breaks: refused before anything runs
        distributed.setup(cfg.trainer)  # joins the launcher's process group (torchrun); alone, nothing
        self.run_dir = RunDir.for_config(cfg)  # named after setup: a multi-process run's hash includes its launch
        # transformers' own checks of the trainer options together; after setup, as they set up the devices
        check_training_arguments(self._training_arguments)
        distributed.on_main(self.run_dir.check_unlocked)  # another process is on this config: stop before loading

    def finished_before(self) -> dict[str, Any] | None:
        """The metrics of this config's finished run (a damaged record stops here, naming the file), unless
        ``force_rerun``."""
        if self.cfg.force_rerun or not distributed.on_main(self.run_dir.is_finished):
            return None
        metrics = distributed.on_main(self.run_dir.finished_metrics)
        log.info("already finished, skipping: %s", self.run_dir.path)
        return metrics

    def load(self) -> None:
        """Model, method, training data and evaluation suite, all checked against each other."""
        cfg = self.cfg
        self.model, self.tokenizer = load_model(cfg.model, num_labels=cfg.dataset.get("num_labels"))
        self.targets = list(cfg.method.get("target_modules") or cfg.model.target_modules)
        self.method.validate(self.model, self.targets)
        examples, self.collator = training_examples(cfg.dataset, self.tokenizer)
        self.examples, self.heldout = proxy_split(examples, cfg.get("proxy"), cfg.dataset.name)
        self.eval_records = load_suite_records(cfg.eval)
        check_templates_fill(cfg.eval, self.eval_records)
        check_suite_fits_model(cfg.eval, self.model, self.tokenizer)
        self.total_params = sum(p.numel() for p in self.model.parameters())

    def adapt(self) -> None:
        """The adapter on the model. Data-driven initialisations (LoRA-GA, CorDA) get exactly the training
        examples they declare, or the run stops; the same on every rank, whatever the batch size or number of
        processes."""
        cfg = self.cfg
        request = self.method.calibration_request()
        calibration = calibration_batches(request, self.examples, self.collator, cfg.method.name) if request else None
        self.model = self.method.prepare(self.model, self.targets, list(cfg.model.get("modules_to_save") or []),
                                         calibration)
        self.trainable = count_trainable(self.model)

    # --- the run directory ---

    def open_run_dir(self) -> dict[str, Any] | None:
        """Lock and open the run directory (its first write) and log there; the metrics instead if another
        process finished this config while this one loaded."""
        finished = distributed.on_main(self._hold_run_dir)
        if finished is not None:
            log.info("already finished, skipping: %s", self.run_dir.path)
            return finished
        self.attempt = distributed.on_main(self._create_run_dir)
        if distributed.is_main_process():
            self.held.enter_context(appending_log(self.run_dir.path / LOG_FILE))
        return None

    def _hold_run_dir(self) -> dict[str, Any] | None:
        """Lock the run directory for the rest of the run, from its first write on (a second process on this
        config stops there, naming this one); the metrics if another process finished it while this one loaded."""
        self.held.enter_context(self.run_dir.locked())
        if not self.cfg.force_rerun and self.run_dir.is_finished():
            return self.run_dir.finished_metrics()
        return None

    def _create_run_dir(self) -> int:
        """Create (after a forced re-run: empty) the run directory, record the config; returns the attempt."""
        run_dir = self.run_dir
        if self.cfg.force_rerun:
            # a forced re-run starts from scratch, not from the old run's checkpoints; cleared only now, so a
            # forced re-run that fails its checks leaves the previous results in place
            run_dir.clear()
        run_dir.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir.path / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        attempt = int(run_dir.status().get("attempt", 0)) + 1
        # pid/host let a reader tell a live run from one killed without a chance to record it (kill -9, OOM)
        run_dir.mark("running", attempt=attempt, pid=os.getpid(), host=socket.gethostname())
        return attempt

    # --- the stages (STAGES) ---

    def _begin(self, stage: str) -> None:
        assert stage in self.STAGES, stage
        self.stage = stage

    def resume(self) -> None:
        """The last complete checkpoint of an interrupted run, if any (incomplete ones are set aside)."""
        self._begin("resume")
        self.resume_from, self.skipped = distributed.on_main(self._resume_point)
        if self.resume_from:
            log.info("resuming from %s", self.resume_from)

    def _resume_point(self) -> tuple[str | None, list[Any]]:
        resume_from, skipped = resumable_checkpoint(self.run_dir.checkpoints)
        self.run_dir.mark("running", attempt=self.attempt, pid=os.getpid(), host=socket.gethostname(),
                          resumed_from=resume_from, skipped_checkpoints=[s.describe() for s in skipped])
        return resume_from, skipped

    def train(self) -> None:
        """Train on every rank (from the resume point), then the lr-selection proxy's held-out loss."""
        self._begin("train")
        cfg = self.cfg
        args = self._training_arguments()
        step_log = StepLogCallback(self.run_dir.path / "steps.jsonl")
        self.diagnostics = diagnostics_callback(cfg.get("diagnostics") or {}, step_log, list(cfg.logger.report_to))
        self.trainer = build_trainer(self.model, self.method, args, self.examples, self.collator, step_log,
                                     extra_callbacks=[self.diagnostics] if self.diagnostics else (),
                                     termination=self.termination)
        self.train_output = train_or_restore(self.trainer, self.resume_from)
        if self.termination.requested:  # the Trainer saved a checkpoint at this step and stopped early
            raise Terminated(f"received SIGTERM; stopped after step {self.trainer.state.global_step} and saved a "
                             "checkpoint there: run the same command again to resume")
        # the lr-selection proxy's score, on every rank (the Trainer's evaluation loop gathers across processes)
        heldout = self.heldout
        self.train_extra = {"heldout_loss": heldout_loss(self.trainer, heldout)} if heldout is not None else {}

    def _save_and_evaluate(self) -> dict[str, Any]:
        weights = self.save()
        return self.evaluate(weights)

    def save(self) -> Path:
        """The trained adapter, swapped in whole (never half-written) with its checksums."""
        self._begin("save")
        return Path(atomic_write_dir(self.run_dir.path / "adapter", self._save_sealed))

    def _save_sealed(self, out: Path) -> Any:
        """The adapter's files, then their checksums (checked before a finished run is trusted)."""
        weights = self.method.save(self.trainer.model, out)
        write_manifest(out)
        return weights

    def evaluate(self, weights: Path) -> dict[str, Any]:
        """Score the suite, then record everything in metrics.json (and curves.png)."""
        self._begin("evaluate")
        cfg = self.cfg
        scores = evaluate_suite(self.trainer.model, self.tokenizer, cfg.eval, self.run_dir.path, cfg.progress,
                                self.eval_records)
        metrics = self.metrics(scores, weights)
        write_curves(self.run_dir.path)  # curves.png from steps.jsonl: loss, learning rate, diagnostics
        atomic_write_json(self.run_dir.metrics_file, metrics)
        return metrics

    # --- the record ---

    def metrics(self, scores: dict[str, Any], weights: Path) -> dict[str, Any]:
        """metrics.json: what ran, its scores, its training, its cost, its diagnostics and its provenance."""
        cfg, train_output = self.cfg, self.train_output
        processes = distributed.world_size()
        request = self.method.calibration_request()
        return {
            "run": {
                "name": self.run_dir.path.name, "config_hash": config_hash(cfg), "model": cfg.model.name,
                "method": cfg.method.name, "rank": cfg.rank, "alpha": cfg.alpha, "dataset": cfg.dataset.name,
                "seed": cfg.seed, "smoke": bool(cfg.get("smoke", False)),
                # processes and examples per optimiser step: runs differing in either are different runs
                "world_size": processes,
                "global_train_batch": distributed.global_train_batch(cfg.trainer, processes),
            },
            "eval": {"suite": cfg.eval.name, "protocol": cfg.eval.protocol, "tasks": scores},
            "train": {
                "steps": train_output.global_step,
                # final_loss / mean_loss come from the log history, which a resume restores, so they match an
                # uninterrupted run; the Trainer's own average covers only this process's steps (None if none).
                **loss_summary(self.trainer.state.log_history),
                "session_mean_loss": train_output.training_loss,
                "resumed_from": self.resume_from,
                "skipped_checkpoints": [s.describe() for s in self.skipped],
                "calibration": request.record() if request else None,
                "init": self.method.init_summary(),
                **self.train_extra,
            },
            "cost": {
                "wall_time_s": round(time.time() - self.started, 2), "peak_memory_bytes": peak_memory_bytes(),
                "trainable_params": self.trainable, "total_params": self.total_params,
                "adapter_bytes": weights.stat().st_size,
            },
            "diagnostics": summarise(self.diagnostics),
            "provenance": {"git": git_state(), "packages": package_versions(), "hardware": hardware(),
                           "model": model_provenance(cfg.model)},
        }

    def record_failure(self, err: BaseException) -> None:
        """Whatever stops a run after its directory exists is recorded there, so no run is left "running";
        the caller re-raises (the CLI turns LoralabErrors into one line and a non-zero exit)."""
        if not distributed.is_main_process():
            return
        state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        self.run_dir.mark(state, attempt=self.attempt, error=f"{type(err).__name__}: {err}",
                          completed_steps=self.trainer.state.global_step if self.trainer is not None else None,
                          stage=self.stage, resumed_from=self.resume_from,
                          failed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def record_finished(self, metrics: dict[str, Any]) -> None:
        if distributed.is_main_process():
            self.run_dir.mark("finished", attempt=self.attempt, resumed_from=metrics["train"]["resumed_from"])
            log.info("finished %s: %s", self.run_dir.path.name,
                     {t: _headline(s) for t, s in metrics["eval"]["tasks"].items()})

    def _training_arguments(self) -> Any:
        cfg = self.cfg
        return training_arguments(cfg.trainer, self.run_dir.checkpoints, cfg.seed, list(cfg.logger.report_to),
                                  cfg.progress)


def _headline(task_scores: dict[str, float]) -> str:
    metric = next(k for k in task_scores if not k.endswith("_stderr") and k != "n")
    return f"{metric}={task_scores[metric]:.4f} ± {task_scores[metric + '_stderr']:.4f} (n={task_scores['n']})"

"""Experiment tracking: one wandb run per loralab run (``logger=wandb``), offline unless credentials exist.

loralab starts the wandb run itself, before the Trainer exists, so that it carries what identifies the
experiment; the Trainer's ``WandbCallback`` finds the active run and only adds its own arguments and the
training log to it. What the run holds:

* config: the run's resolved config (what ``config.yaml`` in the run directory holds), plus the Trainer's;
* name: the run directory's name (``<model>-<method>-r<rank>-<dataset>-s<seed>-<hash>``);
* group: the sweep (the name of the ``-m`` invocation's sweep directory, which holds ``sweep.json``);
  a single run has none;
* tags: model, method, ``r<rank>``, data set (and the experiment, when one is selected);
* history: the Trainer's log events and, with ``diagnostics.enabled=true``, the mechanism metrics;
* summary: every evaluation score (``eval/<task>/<metric>``, its standard error and ``n``), the protocol
  and the cost record (``cost/trainable_params``, ``cost/wall_time_s``, ...).

A resumed run (after SIGTERM, a crash) starts a new wandb run with the same name and group, one per attempt.
The run is finished on every way out of the block: exit code 0 when the run finished, 2 for a user-facing
error, 143 for SIGTERM, 130 for Ctrl-C and 1 for anything else (the codes ``run.py`` exits with), so a sweep's
next cell starts a run of its own and the offline run is complete for ``wandb sync``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from loralab.distributed import is_main_process
from loralab.errors import LoralabError
from loralab.training.termination import EXIT_STATUS as TERMINATED_EXIT_STATUS
from loralab.training.termination import Terminated

WANDB = "wandb"


class Tracker:
    """What the runner reports to; this one tracks nothing (no tracking logger, or not the main process)."""

    def log_result(self, metrics: Mapping[str, Any]) -> None:
        """Put a finished run's scores and cost in the tracker's summary."""


class WandbTracker(Tracker):
    def __init__(self, run: Any) -> None:
        self.run = run

    def log_result(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(result_summary(metrics))


def result_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The flat summary of a ``metrics.json`` record: scores under ``eval/``, cost under ``cost/``."""
    summary: dict[str, Any] = {"eval/protocol": metrics["eval"]["protocol"]}
    for task, scores in metrics["eval"]["tasks"].items():
        summary.update({f"eval/{task}/{name}": value for name, value in scores.items()})
    for name, value in (metrics.get("cost") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[f"cost/{name}"] = value
    summary["run_dir_name"] = metrics["run"]["name"]
    return summary


def exit_code(err: BaseException | None) -> int:
    """The status ``run.py`` exits with for this outcome (also what the tracker records)."""
    if err is None:
        return 0
    if isinstance(err, Terminated):
        return TERMINATED_EXIT_STATUS
    if isinstance(err, KeyboardInterrupt):
        return 130  # 128 + SIGINT
    if isinstance(err, LoralabError):
        return 2
    return 1


@contextlib.contextmanager
def track_run(cfg: DictConfig, run_dir: Path) -> Iterator[Tracker]:
    """The tracker of one run, finished however the block is left."""
    if WANDB not in list(cfg.logger.get("report_to") or []) or not is_main_process():  # rank 0 tracks
        yield Tracker()
        return
    run = start_wandb(cfg, Path(run_dir))
    try:
        yield WandbTracker(run)
    except BaseException as err:
        run.finish(exit_code=exit_code(err))
        raise
    run.finish(exit_code=0)


def start_wandb(cfg: DictConfig, run_dir: Path) -> Any:
    import wandb

    model, method, dataset = cfg.model.name, cfg.method.name, cfg.dataset.name
    tags = [str(model), str(method), f"r{cfg.rank}", str(dataset)]
    experiment = _hydra_choice("experiment")
    if experiment:
        tags.append(experiment)
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT") or str(cfg.logger.get("project", "loralab")),
        dir=str(run_dir),
        mode=wandb_mode(),
        name=run_dir.name,
        group=sweep_group(),
        tags=tags,
        job_type="train",
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; otherwise online only where credentials exist, so the default needs no network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_netrc_entry = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if os.environ.get("WANDB_API_KEY") or has_netrc_entry else "offline"


def sweep_group() -> str | None:
    """The sweep directory's name in a multirun (``python run.py -m ...``), None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(str(hydra_cfg.sweep.dir)).name if hydra_cfg.mode == RunMode.MULTIRUN else None


def _hydra_choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get(group)
    return str(choice) if choice not in (None, "null") else None

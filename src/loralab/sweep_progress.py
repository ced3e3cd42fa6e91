"""One line of overall progress after every cell of a sweep run by Hydra's basic (in-process) launcher:

    sweep: cell 3/24 done (2 finished, 1 skipped, 0 failed), elapsed 4m10s, ETA ~1h02m

A Hydra callback (``hydra.callbacks.sweep_progress`` in ``conf/config.yaml``): the number of cells is the
basic sweeper's own expansion of the sweep's parameters and command-line overrides, counted once when the
multirun starts; the states come from the sweep's ``sweep.json``, which ``run.py`` rewrites after each cell.
The ETA is the mean time of the cells that ran (skipped cells take seconds and are left out) times the cells
still to come, so it is an upper bound when some of those turn out finished already. Other launchers (SLURM,
joblib) run cells elsewhere and in parallel, where neither a count nor an ETA from this process means much:
the callback stays silent there.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("loralab")

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
STATES = ("finished", "skipped", "failed")


def count_cells(hydra_cfg: DictConfig) -> int:
    """How many jobs the basic sweeper launches for this multirun (all batches)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = hydra_cfg.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(hydra_cfg.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(overrides, hydra_cfg.sweeper.get("max_batch_size"))
    return sum(len(batch) for batch in batches)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(done: int, total: int, counts: dict[str, int], elapsed: float, run_times: list[float]) -> str:
    states = ", ".join(f"{counts.get(state, 0)} {state}" for state in STATES)
    others = {k: v for k, v in counts.items() if k not in STATES}
    states += "".join(f", {v} {k}" for k, v in sorted(others.items()))
    line = f"sweep: cell {done}/{total} done ({states}), elapsed {duration(elapsed)}"
    remaining = total - done
    if remaining > 0:
        line += f", ETA ~{duration(remaining * sum(run_times) / len(run_times))}" if run_times else ", ETA unknown"
    return line


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.total: int | None = None
        self.started = 0.0
        self.job_started = 0.0
        self.run_times: list[float] = []  # durations of the cells that trained (not skipped)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        if hydra_cfg.launcher.get("_target_") != BASIC_LAUNCHER or hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER:
            return
        self.total = count_cells(hydra_cfg)
        self.started = time.monotonic()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.total is None:
            return
        cell = _read(Path(str(config.hydra.runtime.output_dir)) / "cell.json")
        if cell.get("state") != "skipped":
            self.run_times.append(time.monotonic() - self.job_started)
        counts = _read(Path(str(config.hydra.sweep.dir)) / "sweep.json").get("counts") or {}
        done = sum(counts.values())
        log.info(progress_line(done, self.total, counts, time.monotonic() - self.started, self.run_times))


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

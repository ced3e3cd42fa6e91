"""Entry point: ``python run.py method=sds_lora model=llama3_8b rank=32`` (see conf/config.yaml).

Exit status and failure records:

* a single run exits 0 when it finished (or was already finished and skipped); a user-facing error
  (``LoralabError``: bad value, missing weights, non-finite loss, no usable checkpoint) is printed as one
  line and exits 2; anything else is a bug and propagates with its traceback (exit 1). Either way, once the
  run directory exists its ``status.json`` says ``failed`` with the error.
* a sweep (``python run.py -m ...``) runs every cell even when some fail. Each cell writes
  ``<sweep dir>/<n>/cell.json`` (state ``finished`` / ``skipped`` / ``failed``, its overrides, run directory
  and error), and ``<sweep dir>/sweep.json`` lists all cells; this also covers cells that fail before their
  run directory exists (an invalid rank, say). At the end the failed cells are summarised and the process
  exits 1 if any cell failed, so scripts and CI notice. Re-running the same sweep skips the finished cells
  (their run directories say ``finished``) and retries only the failed or unfinished ones.
* SIGTERM (preemption, a time limit) during training writes a checkpoint after the current step; the run
  directory says ``interrupted``, a sweep stops (as on Ctrl-C), and the process exits 143. Running the same
  command again resumes from that checkpoint (:mod:`loralab.training.termination`).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from loralab.distributed import is_main_process
from loralab.errors import LoralabError
from loralab.hydra_callbacks import SweepDirectory
from loralab.io import atomic_write_json, read_json
from loralab.rundir import LOG_FILE, RunDir, appending_log
from loralab.runner import run
from loralab.training.termination import EXIT_STATUS as TERMINATED_EXIT_STATUS
from loralab.training.termination import Terminated

log = logging.getLogger("loralab")

CELL_FILE = "cell.json"
SWEEP_FILE = "sweep.json"

# Sweep directory of the cells this process ran (the basic launcher runs them all in-process); read after
# Hydra returns to summarise the sweep and choose the exit status.
_sweep_dir: Path | None = None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        with appending_log(Path(hydra_cfg.runtime.output_dir) / LOG_FILE):  # the cell's log beside its cell.json
            run_cell(cfg, hydra_cfg)
        return
    try:
        run(cfg)
    except LoralabError as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)


def run_cell(cfg: DictConfig, hydra_cfg: Any) -> None:
    """One sweep cell, recorded on disk whatever happens. With the in-process launcher a failure is not
    re-raised, so one failed cell cannot stop the others and the end-of-sweep summary reports it."""
    global _sweep_dir
    _sweep_dir = Path(hydra_cfg.sweep.dir)
    record: dict[str, Any] = {"cell": hydra_cfg.job.num, "overrides": list(hydra_cfg.overrides.task)}
    run_dir: RunDir | None = None
    interrupted: BaseException | None = None
    try:
        run_dir = RunDir.for_config(cfg)
        already_finished = not cfg.force_rerun and run_dir.is_finished()
        run(cfg)
        record["state"] = "skipped" if already_finished else "finished"
    except Exception as err:  # noqa: BLE001 — recorded and summarised; the sweep goes on
        record.update(state="failed", error=f"{type(err).__name__}: {err}")
        if isinstance(err, LoralabError):
            log.error("cell %s failed: %s: %s", hydra_cfg.job.num, type(err).__name__, err)
        else:  # not a user error: keep the traceback for whoever debugs it
            log.exception("cell %s failed", hydra_cfg.job.num)
    except BaseException as err:  # Ctrl-C: record it below, then stop the whole sweep as the user asked
        record.update(state="interrupted", error=f"{type(err).__name__}: {err}")
        interrupted = err
    # only a directory that exists is worth pointing at: checks that fail first write nothing there
    record["run_dir"] = str(run_dir.path) if run_dir is not None and run_dir.path.is_dir() else None
    if is_main_process():  # under torchrun every rank runs the cell; one records it
        _record_cell(Path(hydra_cfg.runtime.output_dir), record, _sweep_dir)
    if interrupted is not None:
        raise interrupted
    # A failed cell is not re-raised, whatever the launcher: cells run elsewhere (SLURM, submitit_local) record
    # themselves like in-process ones, and the launching process summarises them all (SweepDirectory).


def _record_cell(cell_dir: Path, record: dict[str, Any], sweep_dir: Path) -> None:
    atomic_write_json(cell_dir / CELL_FILE, record)
    atomic_write_json(sweep_dir / SWEEP_FILE, sweep_summary(sweep_dir))  # kept current after every cell


def sweep_summary(sweep_dir: Path) -> dict[str, Any]:
    """All cell records under ``sweep_dir``, read back from disk (so it also works for cells run elsewhere)."""
    cells = sorted((read_json(f) for f in Path(sweep_dir).rglob(CELL_FILE)), key=lambda c: c.get("cell", 0))
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell["state"]] = counts.get(cell["state"], 0) + 1
    return {"sweep_dir": str(sweep_dir), "counts": counts, "cells": cells}


def report_sweep(sweep_dir: Path) -> int:
    """Log a summary of the sweep; the exit status is 1 when any cell failed or was interrupted."""
    if not is_main_process():  # the main process recorded the cells and reports them
        return 0
    summary = sweep_summary(sweep_dir)
    atomic_write_json(sweep_dir / SWEEP_FILE, summary)
    bad = [c for c in summary["cells"] if c["state"] not in ("finished", "skipped")]
    if not bad:
        log.info("sweep finished: %s (%s)", summary["counts"], sweep_dir / SWEEP_FILE)
        return 0
    lines = [f"  #{c['cell']} {' '.join(c['overrides'])}: {c.get('error')}" for c in bad]
    log.error("sweep: %d of %d cells failed (%s); re-run the same command to retry only those:\n%s",
              len(bad), len(summary["cells"]), sweep_dir / SWEEP_FILE, "\n".join(lines))
    return 1


if __name__ == "__main__":
    try:
        main()
    except Terminated as err:  # SIGTERM: the run (or sweep cell) recorded itself as interrupted
        log.error("%s", err)
        if _sweep_dir is not None:
            report_sweep(_sweep_dir)
        sys.exit(TERMINATED_EXIT_STATUS)
    sweep_dir = _sweep_dir or SweepDirectory.path   # the cells ran here, or elsewhere (submitit)
    if sweep_dir is not None:
        sys.exit(report_sweep(sweep_dir))

"""``make tune-lr EXPERIMENT=<table>``: each (model, method, data set) row of a table gets its own learning rate,
chosen by one declared proxy and one rule, and written as a TUNED config entry with its provenance.

The experiment declares the proxy (``tune_lr:`` in ``conf/experiment/<table>.yaml``; provenance, not recipe,
so it is not in the cells' run hash)::

    tune_lr:
      grid: [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4]   # the same grid for every method of the table
      extend: 1            # at most this many 1-3-10 steps past an edge the winner sits on
      steps: 200           # optimiser steps of each proxy run, at the cell's own batch and schedule
      train_examples: 6400 # the proxy trains on the first N training examples ...
      heldout_examples: 512  # ... and is scored by its mean loss on the last M, never trained on
      rank: 32             # the rank the rows are tuned at (null: each row's first swept rank)
      seed: 0

For every row the proxy runs each grid point (``tune=lr_proxy proxy.lr=<lr>``: an ordinary run, hashed,
resumable, skipped when already finished, under ``<results>/tune/runs``), selects by
:mod:`loralab.tuning.selection`, extends the grid past an edge, and writes
``conf/tuned_lr/<sweep>/<model>_<method>_<data set>.yaml`` (:mod:`loralab.tuning.registry`), which every later
run of that row composes. Rows are keyed by (model, method, data set): all ranks and seeds of a row share the
rate tuned at ``tune_lr.rank``; jobs that differ in other swept keys too (an ablation's settings) share the
rate tuned on the first of them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from loralab.errors import ConfigError, NonFiniteLossError
from loralab.tables.grid import CONF_DIR, compose, expand_sweep, sweeps_of
from loralab.tuning.selection import extend_lr, select_lr

log = logging.getLogger("loralab")

PROXY_GROUP = "tune=lr_proxy"


@dataclass(frozen=True)
class TuneSpec:
    """An experiment's ``tune_lr`` block, checked."""

    grid: tuple[float, ...]
    extend: int
    steps: int
    train_examples: int
    heldout_examples: int
    rank: int | None
    seed: int | None

    @classmethod
    def of(cls, cfg: DictConfig, experiment: str) -> "TuneSpec":
        block = cfg.get("tune_lr")
        if block is None:
            raise ConfigError(f"experiment {experiment} declares no tune_lr block (grid, extend, steps, "
                              f"train_examples, heldout_examples, rank, seed), so its rates are not tuned: they "
                              f"are the ones its files state (e.g. the paper's)")
        spec = OmegaConf.to_container(block, resolve=True)
        assert isinstance(spec, dict)
        grid = spec.get("grid")
        if not isinstance(grid, list) or not grid or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in grid):
            raise ConfigError(f"tune_lr.grid={grid!r} is invalid: a list of positive learning rates")
        counts = {}
        for key, low in (("extend", 0), ("steps", 1), ("train_examples", 1), ("heldout_examples", 1)):
            value = spec.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"tune_lr.{key}={value!r} is invalid: an integer >= {low}")
            counts[key] = value
        for key in ("rank", "seed"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"tune_lr.{key}={value!r} is invalid: an integer or null")
        return cls(tuple(sorted(float(x) for x in grid)), rank=spec.get("rank"), seed=spec.get("seed"), **counts)

    def budget(self) -> dict[str, Any]:
        return {"steps": self.steps, "train_examples": self.train_examples,
                "heldout_examples": self.heldout_examples, "rank": self.rank, "seed": self.seed}


@dataclass
class TuneCell:
    """One row to tune: a sweep's (model, method, data set), run as ``job`` (at the tuning rank and seed)."""

    sweep: str
    model: str
    method: str
    dataset: str
    job: list[str]
    shared_with: int = 1          # how many swept jobs take the rate tuned here

    def describe(self) -> str:
        return f"{self.sweep}: {self.model} / {self.method} / {self.dataset}"


@dataclass
class ProxyResult:
    lr: float
    heldout_loss: float           # inf: diverged
    run: str


@dataclass
class Selection:
    cell: TuneCell
    spec: TuneSpec
    results: list[ProxyResult] = field(default_factory=list)
    lr: float = math.nan
    edge: str | None = None

    @property
    def losses(self) -> dict[float, float]:
        return {r.lr: r.heldout_loss for r in self.results}


def _with(job: Sequence[str], key: str, value: Any) -> list[str]:
    """``job`` with ``key=value`` (replacing a swept value of that key)."""
    return [o for o in job if o.split("=", 1)[0] != key] + [f"{key}={value}"]


def tune_cells(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> tuple[TuneSpec, list[TuneCell]]:
    """The proxy declaration and the rows to tune of every sweep feeding ``experiment``'s table."""
    extra = [o for o in extra if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    spec = TuneSpec.of(compose([f"experiment={experiment}", *extra], conf_dir), experiment)
    cells: dict[tuple[str, str, str, str], TuneCell] = {}
    for sweep in sweeps_of(experiment, conf_dir):
        for job in expand_sweep(sweep, extra, conf_dir):
            keys = dict(o.split("=", 1) for o in job)
            cfg_keys = (sweep, keys.get("model"), keys.get("method"), keys.get("dataset"))
            if None in cfg_keys:  # not swept: read the composed defaults
                cfg = compose(job, conf_dir)
                cfg_keys = (sweep, cfg.model.name, cfg.method.name, cfg.dataset.name)
            key = tuple(str(k) for k in cfg_keys)
            if key in cells:
                cells[key].shared_with += 1
                continue
            tuned_job = list(job)
            if spec.rank is not None:
                tuned_job = _with(tuned_job, "rank", spec.rank)
            if spec.seed is not None:
                tuned_job = _with(tuned_job, "seed", spec.seed)
            cells[key] = TuneCell(*key, job=tuned_job)  # type: ignore[arg-type]
    return spec, list(cells.values())


def proxy_overrides(cell: TuneCell, lr: float, extra: Sequence[str] = ()) -> list[str]:
    """The overrides of one proxy run (``python run.py <these>`` runs exactly it)."""
    return [*cell.job, *extra, PROXY_GROUP, f"proxy.lr={lr!r}"]


def run_proxy(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> ProxyResult:
    """One proxy run through the runner (skipped when already finished); a diverged run scores +inf."""
    from loralab.rundir import RunDir
    from loralab.runner import run

    cfg = compose(overrides, conf_dir)
    lr = float(cfg.proxy.lr)
    name = RunDir.for_config(cfg).path.name
    try:
        metrics = run(cfg)
    except NonFiniteLossError as err:
        log.warning("proxy run %s diverged: %s", name, err)
        return ProxyResult(lr, math.inf, name)
    return ProxyResult(lr, float(metrics["train"]["heldout_loss"]), name)


def tune_cell(cell: TuneCell, spec: TuneSpec, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR,
              runner: Callable[[Sequence[str], Path], ProxyResult] = run_proxy) -> Selection:
    """Run the grid (and its extensions past an edge) for one row and select its rate."""
    selection = Selection(cell, spec)
    for lr in spec.grid:
        selection.results.append(runner(proxy_overrides(cell, lr, extra), conf_dir))
    selection.lr, selection.edge = select_lr(selection.losses)
    for _ in range(spec.extend):
        if selection.edge is None:
            break
        lr = extend_lr(selection.lr, selection.edge)
        selection.results.append(runner(proxy_overrides(cell, lr, extra), conf_dir))
        selection.lr, selection.edge = select_lr(selection.losses)
    selection.results.sort(key=lambda r: r.lr)
    return selection


def tune_experiment(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR,
                    out_dir: Path | None = None,
                    runner: Callable[[Sequence[str], Path], ProxyResult] = run_proxy) -> list[tuple[Selection, Path]]:
    """Tune every row of ``experiment``'s table; write each row's TUNED entry under ``out_dir`` (default
    ``<conf_dir>/tuned_lr``) as soon as the row is done, so an interrupted tuning keeps the rows it finished."""
    from loralab.tuning.registry import write_entry

    spec, cells = tune_cells(experiment, extra, conf_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(conf_dir) / "tuned_lr"
    done = []
    for n, cell in enumerate(cells, 1):
        log.info("tune-lr %d/%d %s: grid %s", n, len(cells), cell.describe(), list(spec.grid))
        replaced = compose([*cell.job, *extra], conf_dir)
        selection = tune_cell(cell, spec, extra, conf_dir, runner)
        done.append((selection, write_entry(selection, out_dir, experiment, replaced)))
    return done

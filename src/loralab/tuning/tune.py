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
      seed: 0              # the seed of the proxy runs

For every row the proxy runs each grid point (``tune=lr_proxy proxy.lr=<lr>``: an ordinary run, hashed,
resumable, skipped when already finished, under ``<results>/tune/runs``), selects by
:mod:`loralab.tuning.selection`, extends the grid past an edge, and writes
``conf/tuned_lr/<sweep>/<model>_<method>_<data set>.yaml`` (:mod:`loralab.tuning.registry`), which every later
run of that row composes. A row is tuned at each rank it is swept at (a method's scale, and so its best rate,
depends on the rank: LoRA's alpha/r, SDS-LoRA's alpha/sqrt(r)); its seeds share the rate, and jobs that differ
in other swept keys too (an ablation's settings) share the rate tuned on the first of them.
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
    seed: int | None

    KEYS = ("grid", "extend", "steps", "train_examples", "heldout_examples", "seed")

    @classmethod
    def of(cls, cfg: DictConfig, experiment: str) -> "TuneSpec":
        block = cfg.get("tune_lr")
        if block is None:
            raise ConfigError(f"experiment {experiment} declares no tune_lr block (grid, extend, steps, "
                              f"train_examples, heldout_examples, seed), so its rates are not tuned: they "
                              f"are the ones its files state (e.g. the paper's)")
        spec = OmegaConf.to_container(block, resolve=True)
        assert isinstance(spec, dict)
        unknown = sorted(set(spec) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"tune_lr has unknown key(s) {unknown}; valid keys: {list(cls.KEYS)} (rows are "
                              f"tuned at every rank they are swept at)")
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
        seed = spec.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ConfigError(f"tune_lr.seed={seed!r} is invalid: a non-negative integer or null")
        return cls(tuple(sorted(float(x) for x in grid)), seed=seed, **counts)

    def budget(self) -> dict[str, Any]:
        return {"steps": self.steps, "train_examples": self.train_examples,
                "heldout_examples": self.heldout_examples, "seed": self.seed}


@dataclass
class TuneCell:
    """One rate to tune: a sweep's (model, method, data set) at one rank, run as ``job`` (at the tuning seed)."""

    sweep: str
    model: str
    method: str
    dataset: str
    rank: int
    job: list[str]
    shared_with: int = 1          # how many swept jobs take the rate tuned here

    @property
    def row(self) -> tuple[str, str, str, str]:
        """The TUNED entry this rate goes to: one per (sweep, model, method, data set), rates by rank."""
        return self.sweep, self.model, self.method, self.dataset

    def describe(self) -> str:
        return f"{self.sweep}: {self.model} / {self.method} / {self.dataset} / r{self.rank}"


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


def tune_cells(experiment: str, extra: Sequence[str] = (),
               conf_dir: Path = CONF_DIR) -> tuple[TuneSpec, list[TuneCell]]:
    """The proxy declaration and the rates to tune — (model, method, data set, rank) of every sweep feeding
    ``experiment``'s table."""
    extra = [o for o in extra if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    spec = TuneSpec.of(compose([f"experiment={experiment}", *extra], conf_dir), experiment)
    cells: dict[tuple[str, ...], TuneCell] = {}
    for sweep in sweeps_of(experiment, conf_dir):
        for job in expand_sweep(sweep, extra, conf_dir):
            keys = dict(o.split("=", 1) for o in job)
            names = (keys.get("model"), keys.get("method"), keys.get("dataset"), keys.get("rank"))
            if None in names:  # not swept: read the composed defaults
                cfg = compose(job, conf_dir)
                names = (cfg.model.name, cfg.method.name, cfg.dataset.name, cfg.rank)
            key = (sweep, *(str(n) for n in names))
            if key in cells:
                cells[key].shared_with += 1
                continue
            tuned_job = _with(job, "seed", spec.seed) if spec.seed is not None else list(job)
            cells[key] = TuneCell(*key[:4], rank=int(key[4]), job=tuned_job)
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
    """Tune every rate of ``experiment``'s table; write each row's TUNED entry under ``out_dir`` (default
    ``<conf_dir>/tuned_lr``) as soon as its ranks are done, so an interrupted tuning keeps the rows it finished."""
    from loralab.provenance import git_state
    from loralab.tuning.registry import write_entry

    commit = git_state()  # the code that runs the proxies (entries written later would see themselves as changes)
    spec, cells = tune_cells(experiment, extra, conf_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(conf_dir) / "tuned_lr"
    rows: dict[tuple[str, str, str, str], list[TuneCell]] = {}
    for cell in cells:
        rows.setdefault(cell.row, []).append(cell)
    done = []
    n = 0
    for row_cells in rows.values():
        selections = []
        replaced = {cell.rank: compose([*cell.job, *extra], conf_dir) for cell in row_cells}  # the rates before
        for cell in row_cells:
            n += 1
            log.info("tune-lr %d/%d %s: grid %s", n, len(cells), cell.describe(), list(spec.grid))
            selections.append(tune_cell(cell, spec, extra, conf_dir, runner))
        path = write_entry(selections, out_dir, experiment, replaced, commit=commit)
        done += [(selection, path) for selection in selections]
    return done

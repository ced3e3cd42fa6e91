"""Where a run's learning rate comes from. Every cell of a paper table runs at a *labelled* learning rate:

    PAPER     the paper being reproduced states it
    INFERRED  it does not; the rate is reasoned from elsewhere, and the note says from what
    TUNED     chosen by ``make tune-lr`` (loralab.tuning): held-out loss of a declared proxy, provenance attached

The label sits beside the value, in the file that sets the value, as the top-level ``lr_source`` node::

    lr_source:
      label: INFERRED
      lr: 2.0e-4
      note: the usual LLM-LoRA rate (QLoRA/DoRA); the paper's is NOT FOUND
    trainer:
      learning_rate: ${lr_source.lr}

Files that set one, in composition order (a later one wins, label and value together):
``conf/method_dataset/<method>_<dataset>.yaml`` (per-method rates), ``conf/experiment/<name>.yaml`` (one rate
for every method, e.g. LoRAM's PAPER rates) and ``conf/tuned_lr/<experiment>/<model>_<method>_<dataset>.yaml``
(written by tune-lr). ``lr_source`` is provenance, not recipe: it is left out of the run hash; the rate itself,
``trainer.learning_rate``, is in it.

A paper experiment (its table has a ``reference``) refuses a cell whose rate no label vouches for — none set,
or a command-line ``trainer.learning_rate`` that differs from the labelled one — before anything runs: the
runner checks each run (``check_learning_rate``), ``run.py -m`` checks every cell of the sweep before the first
one starts (``SweepLrCheck``), and so does ``scripts/plan.py --sweeps``, which the Makefile's reproduce targets
call first. Other runs (the embedded default, ad-hoc sweeps) may run unlabelled; tables then say so.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from loralab.errors import ConfigError

log = logging.getLogger("loralab")

LABELS: tuple[str, ...] = ("PAPER", "INFERRED", "TUNED")
# What a TUNED entry must carry to be reproducible (written by loralab.tuning.registry)
TUNED_PROVENANCE: tuple[str, ...] = ("rule", "grid", "budget", "losses", "date", "commit")
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class LabelledLr:
    """A run's learning rate and what vouches for it (``label`` None: nothing does)."""

    lr: float | None
    label: str | None
    note: str = ""

    def describe(self) -> str:
        """``0.0002 (INFERRED)``: what a table or plan shows for the row."""
        value = "?" if self.lr is None else f"{self.lr:.3g}"
        return f"{value} ({self.label or UNLABELLED})"


_READ = ("trainer", "lr_source", "table", "proxy", "method", "dataset", "model", "rank")


def _plain(cfg: Any) -> dict[str, Any]:
    """The keys the checks read, resolved (never Hydra's own node, which resolves only inside a running job)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k in _READ if k in cfg for v in [cfg[k]]}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def labelled_lr(cfg: DictConfig | Mapping[str, Any]) -> LabelledLr:
    """The run's ``trainer.learning_rate`` and its label, if ``lr_source`` vouches for that very value."""
    plain = _plain(cfg)
    lr = _number((plain.get("trainer") or {}).get("learning_rate"))
    source = plain.get("lr_source") or {}
    if not isinstance(source, Mapping) or not _same(lr, _number(source.get("lr"))):
        return LabelledLr(lr, None)
    return LabelledLr(lr, source.get("label"), str(source.get("note") or ""))


def is_paper_cell(cfg: DictConfig | Mapping[str, Any]) -> bool:
    """A cell of a table with published numbers (``table.reference`` set), not an lr-selection proxy run."""
    plain = _plain(cfg)
    table = plain.get("table") or {}
    return bool(isinstance(table, Mapping) and table.get("reference")) and not plain.get("proxy")


@dataclass(frozen=True)
class LrProblem:
    """Why one cell's learning rate is not acceptable."""

    method: str
    dataset: str
    model: str
    rank: Any
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.method} on {self.dataset} ({self.model}, rank {self.rank}): {self.reason}" + (
            f"; {self.hint}" if self.hint else "")


def _hint(method: str, dataset: str, experiment: str | None) -> str:
    return (f"label the pair's rate in conf/method_dataset/{method}_{dataset}.yaml (lr_source: {{label: "
            f"{'|'.join(LABELS)}, lr, note}} and trainer.learning_rate: ${{lr_source.lr}}) or run "
            f"make tune-lr EXPERIMENT={experiment}")


def lr_problem(cfg: DictConfig | Mapping[str, Any]) -> LrProblem | None:
    """Why this run's learning rate is not acceptable, or None. Paper cells need a label; every run needs a rate."""
    plain = _plain(cfg)
    name = lambda group: str((plain.get(group) or {}).get("name", "?"))  # noqa: E731
    problem = lambda reason, hint="": LrProblem(name("method"), name("dataset"), name("model"),  # noqa: E731
                                                plain.get("rank"), reason, hint)
    lr = _number((plain.get("trainer") or {}).get("learning_rate"))
    source = plain.get("lr_source")
    if lr is None or lr <= 0:
        by_rank, where = None, ""
        if isinstance(source, Mapping):  # a rate given per rank (INFERRED by_rank, TUNED tuned.lr_by_rank)
            tuned = source.get("tuned") if source.get("label") == "TUNED" else None
            by_rank, where = ((tuned or {}).get("lr_by_rank"), "tuned.lr_by_rank") if tuned else (
                source.get("by_rank"), "by_rank")
        hint = (f"lr_source.{where} gives rates for ranks {sorted(by_rank, key=int)} only" if by_rank else "")
        return problem(f"trainer.learning_rate={lr!r} is not a positive number", hint)
    if source is not None:
        if not isinstance(source, Mapping) or source.get("label") not in LABELS:
            label = source.get("label") if isinstance(source, Mapping) else source
            return problem(f"lr_source.label={label!r}; valid labels: {list(LABELS)}")
        if source.get("label") == "TUNED":
            missing = [k for k in TUNED_PROVENANCE if (source.get("tuned") or {}).get(k) in (None, "", [])]
            if missing:
                return problem(f"lr_source.label=TUNED lacks its provenance lr_source.tuned.{missing}")
    if not is_paper_cell(plain):
        return None
    experiment = (plain.get("table") or {}).get("name")
    if source is None:
        return problem(f"no labelled learning rate in paper experiment {experiment} (it would run at the "
                       f"trainer default {lr:g})", _hint(name("method"), name("dataset"), experiment))
    if not str(source.get("note") or "").strip():
        return problem(f"lr_source.note is empty; say where the {source['label']} rate comes from")
    if not _same(lr, _number(source.get("lr"))):
        return problem(f"trainer.learning_rate={lr:g} is not the labelled rate lr_source.lr={source.get('lr')!r} "
                       f"({source['label']})", "in a paper experiment set a rate through lr_source (lr_source.lr=… "
                       f"lr_source.label={'|'.join(LABELS)} lr_source.note=…)")
    return None


def check_learning_rate(cfg: DictConfig) -> None:
    """Raise ConfigError when the run's learning rate is missing, or unlabelled in a paper experiment."""
    problem = lr_problem(cfg)
    if problem:
        raise ConfigError(str(problem))


def sweep_problems(cells: Iterable[DictConfig | Mapping[str, Any]]) -> list[str]:
    """One line per (method, data set, reason) among the cells' problems, naming the cells it covers."""
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for cell in cells:
        if (p := lr_problem(cell)) is not None:
            at = f"{p.model} r{p.rank}"
            cells_of = grouped.setdefault((p.method, p.dataset, p.reason, p.hint), [])
            if at not in cells_of:
                cells_of.append(at)
    return [f"{method} × {dataset}: {reason} [{', '.join(at)}]" + (f"; {hint}" if hint else "")
            for (method, dataset, reason, hint), at in grouped.items()]


def refusal(problems: Sequence[str], what: str) -> str:
    """The message a sweep prints when it refuses to start."""
    return (f"{what}: {len(problems)} (method × data set) pair(s) lack a usable learning rate; nothing was "
            "run:\n" + "\n".join(f"  {p}" for p in problems))


try:  # Hydra's callback base class (hydra-core >= 1.1)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class SweepLrCheck(_HydraCallback):  # type: ignore[misc,valid-type]
    """``run.py -m``: compose every cell of the sweep and refuse to start (exit 2, nothing run) when any lacks a
    usable learning rate. Registered in conf/config.yaml under ``hydra.callbacks``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and carries on; a check that cannot run must stop
        # the sweep instead of letting it start unchecked.
        try:
            problems, jobs = self._problems(config)
        except Exception as err:  # noqa: BLE001
            log.error("could not check the sweep's learning rates, nothing was run: %s: %s", type(err).__name__, err)
            sys.exit(2)
        if problems:
            log.error("%s", refusal(problems, f"sweep of {jobs} cell(s)"))
            sys.exit(2)

    @staticmethod
    def _problems(config: DictConfig) -> tuple[list[str], int]:
        from hydra.core.global_hydra import GlobalHydra

        from loralab.tables.grid import split_jobs

        swept = config.hydra.sweeper.get("params")  # None for a sweep given on the command line only
        params = OmegaConf.to_container(swept) if swept is not None else {}
        task = list(OmegaConf.to_container(config.hydra.overrides.task) or [])
        jobs = split_jobs(params, task)  # type: ignore[arg-type]
        loader = GlobalHydra.instance().config_loader()
        seen: set[tuple[str, ...]] = set()
        cells = []
        for job in jobs:
            key = tuple(o for o in job if not o.startswith("seed="))  # the seed never changes the rate
            if key not in seen:
                seen.add(key)
                cells.append(loader.load_sweep_config(config, list(job)))
        return sweep_problems(cells), len(jobs)

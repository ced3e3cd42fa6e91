"""A paper table's cells: the jobs of the Hydra sweeps that feed it, expanded exactly as ``python run.py -m``
would (Hydra's own basic sweeper), each composable with the real config tree.

A table shows the runs whose configuration *is* one of its cells (same ``config_hash``), whichever sweep or
command made them: the ``table:`` block is not part of a run's identity, so a cell two tables share is one run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from loralab.errors import ConfigError
from loralab.rundir import config_hash

# Swept keys that a run also records under metrics.json's "run" (a config group's option is named after its
# file, which tests/test_table_selection.py checks): cells whose values differ from every run's are not composed.
RUN_FIELDS = ("model", "method", "dataset", "rank", "seed")

CONF_DIR: Path = Path(__file__).resolve().parents[3] / "conf"


def sweeps_of(experiment: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiments whose sweeps feed ``experiment``'s table (``table.sweeps``; default: itself)."""
    file = Path(conf_dir) / "experiment" / f"{experiment}.yaml"
    if not file.is_file():
        valid = sorted(p.stem for p in file.parent.glob("*.yaml"))
        raise ConfigError(f"no experiment {experiment!r} in {file.parent}; valid: {valid}")
    raw = OmegaConf.load(file)
    table = raw.get("table") if isinstance(raw, DictConfig) else None
    if table is not None and table.get("kind") == "computed":
        return []                       # computed from model configs, nothing to run (rank_params)
    sweeps = list(table.get("sweeps") or []) if table is not None else []
    return [str(s) for s in sweeps] or [experiment]


def tables_of(experiment: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiments among ``experiment``'s sweeps whose own file declares a table (build_table.py names)."""
    names = []
    for sweep in sweeps_of(experiment, conf_dir):
        raw = OmegaConf.load(Path(conf_dir) / "experiment" / f"{sweep}.yaml")
        if isinstance(raw, DictConfig) and raw.get("table") is not None:
            names.append(sweep)
    return names


def compose(overrides: Sequence[str], conf_dir: Path = CONF_DIR, hydra_config: bool = False) -> DictConfig:
    """The config ``python run.py <overrides>`` would run (``hydra_config``: keep the ``hydra`` node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def configured_paths(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """The ``paths`` config as ``python run.py <overrides>`` composes it; only the ``paths`` overrides count."""
    return compose([o for o in overrides if _key(o).split(".")[0] == "paths"], conf_dir).paths


def expand_sweep(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """The override list of every job of ``python run.py -m experiment=<experiment> <extra>``, in launch order."""
    return _split(experiment, _sweep_params(experiment, extra, conf_dir), extra)


def _sweep_params(experiment: str, extra: Sequence[str], conf_dir: Path) -> dict[str, Any]:
    """The experiment's ``hydra.sweeper.params``, composed with the ``extra`` that are not sweeps (``seed=0,1``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(extra))
    single = [text for text, o in zip(extra, parsed) if not o.is_sweep_override()]
    cfg = compose([f"experiment={experiment}", *single], conf_dir, hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper.params) or {}  # type: ignore[return-value]


def _split(experiment: str, params: dict[str, Any], extra: Sequence[str]) -> list[list[str]]:
    """Hydra's basic sweeper on the swept ``params`` and the command line ``extra`` (a later value wins)."""
    return split_jobs(params, [f"experiment={experiment}", *extra])


def split_jobs(params: dict[str, Any], task_overrides: Sequence[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` and the command line's overrides (a
    command-line value replaces the swept one); also what a running sweep's lr check reads."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in params.items()] + list(task_overrides)
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return jobs


def table_jobs(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """Every job of every sweep feeding ``experiment``'s table."""
    return [job for sweep in sweeps_of(experiment, conf_dir) for job in expand_sweep(sweep, extra, conf_dir)]


def sweep_configs(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[DictConfig]:
    """The composed config of every job the sweeps feeding ``experiment``'s table run; jobs that differ only by
    seed are composed once (for checks that do not depend on the seed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    jobs = {tuple(o for o in job if not o.startswith("seed=")): job for job in table_jobs(experiment, extra, conf_dir)}
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return [hydra_compose(config_name="config", overrides=list(job)) for job in jobs.values()]


def table_sweeps(table: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The sweeps whose cells ``table`` shows: those feeding it, less the ones that write a table of their own."""
    own = set(tables_of(table, conf_dir))
    return [s for s in sweeps_of(table, conf_dir) if s == table or s not in own]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def table_cells(table: str, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """Every job whose runs ``table`` shows under ``overrides`` (what ``make reproduce-… ARGS=…`` passes).

    An override of a swept key (``model=llama3_8b``) narrows what a sweep runs, not what its table shows: the table
    has the cells of the whole grid under the other overrides, plus the cells the overrides name (which may lie
    outside the grid, e.g. ``model=tiny_lm``).
    """
    named, grid = _cells(table, overrides, conf_dir)
    return named + [job for job in grid if job not in named]


def _cells(table: str, overrides: Sequence[str], conf_dir: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(the jobs the sweeps run under ``overrides``, the jobs of the whole grid under its non-swept overrides)."""
    named: list[list[str]] = []
    grid: list[list[str]] = []
    for sweep in table_sweeps(table, conf_dir):
        params = _sweep_params(sweep, overrides, conf_dir)
        named += [job for job in _split(sweep, params, overrides) if job not in named]
        recipe = [o for o in overrides if _key(o) not in params]
        grid += [job for job in _split(sweep, params, recipe) if job not in grid]
    return named, grid


def runs_of_table(table: str, runs: Sequence[Any], overrides: Sequence[str] = (),
                  conf_dir: Path = CONF_DIR) -> list[Any]:
    """The ``runs`` (each with metrics.json's ``run`` dict) whose ``config_hash`` is one of ``table``'s cells."""
    from hydra.errors import HydraException

    recorded = [r.run for r in runs]
    named, grid = _cells(table, overrides, conf_dir)
    wanted: set[str] = set()
    for job in named + [job for job in grid if job not in named]:
        values = dict(o.split("=", 1) for o in job if _key(o) in RUN_FIELDS and "=" in o)
        # composing a cell costs ~0.1 s: only cells that some run could be are composed and hashed
        candidates = [run for run in recorded if all(str(run.get(k)) == v for k, v in values.items())]
        if not candidates:
            continue
        try:
            cfg = compose(job, conf_dir)
        except HydraException:
            if job in named:
                raise
            continue  # a grid cell the overrides do not apply to (eval.tasks.1.* on a one-task suite): none ran
        # a multi-process run's hash includes its launch (config_hash): the cell as launched on that many processes
        for processes in {int(run.get("world_size") or 1) for run in candidates}:
            wanted.add(config_hash(cfg, processes=processes))
    return [r for r, run in zip(runs, recorded) if run.get("config_hash") in wanted]

"""A paper table's cells: the jobs of the Hydra sweeps that feed it, expanded exactly as ``python run.py -m``
would (Hydra's own basic sweeper), each composable with the real config tree."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from loralab.errors import ConfigError

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


def expand_sweep(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """The override list of every job of ``python run.py -m experiment=<experiment> <extra>``, in launch order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose([f"experiment={experiment}", *extra], conf_dir, hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + [f"experiment={experiment}", *extra]
    overrides = OverridesParser.create().parse_overrides(arguments)
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return jobs


def table_jobs(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """Every job of every sweep feeding ``experiment``'s table."""
    return [job for sweep in sweeps_of(experiment, conf_dir) for job in expand_sweep(sweep, extra, conf_dir)]

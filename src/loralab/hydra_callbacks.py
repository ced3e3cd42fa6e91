"""Hydra callbacks declared in ``conf/config.yaml`` (``hydra.callbacks``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepDirectory(Callback):
    """Remembers, in the process that launches a sweep, where its cells record themselves.

    With the in-process launcher the cells run in that process and ``run.py`` knows the sweep directory from
    them; with the submitit launchers (SLURM, or ``submitit_local`` on one machine) they run elsewhere, and
    this is how ``run.py`` still summarises the sweep from the cells' records, in the same lines and with the
    same exit status.
    """

    path: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepDirectory.path = Path(str(config.hydra.sweep.dir))

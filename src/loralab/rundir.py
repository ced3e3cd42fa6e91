"""Run directories named by what the run *is* (a hash of its resolved config), not when it ran.

Re-running the same config finds the same directory: a finished run is skipped, an unfinished one resumes
from its last checkpoint. Keys that do not change the result (where results go, logging, progress bars, the
paper-table layout) are left out of the hash.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from loralab.distributed import global_train_batch, world_size
from loralab.io import atomic_write_json, read_json

# Top-level keys that never change what a run computes. ``table`` lays results out in a paper table: a cell two
# tables share is one run, and renaming a column re-runs nothing. ``lr_source`` and ``tune_lr`` say where the
# learning rate came from and how it would be tuned; the rate itself, trainer.learning_rate, is hashed.
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "progress", "force_rerun", "diagnostics", "table", "lr_source",
                     "tune_lr")

STATUS_FILE = "status.json"


def config_hash(cfg: DictConfig, processes: int | None = None) -> str:
    """Hash of what the run computes: the resolved config without :data:`NON_SEMANTIC_KEYS`, plus, for a
    multi-process run (``processes`` > 1; default: this process's world size), the number of processes and
    the global batch. The launch is added only then, so single-process runs keep the hashes they always had."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    semantic = {k: v for k, v in resolved.items() if k not in NON_SEMANTIC_KEYS}
    processes = world_size() if processes is None else processes
    if processes > 1:  # per-device batch 4 on 2 processes is batch 8: another run than batch 4 alone
        semantic["launch"] = {"world_size": processes,
                              "global_train_batch": global_train_batch(resolved.get("trainer") or {}, processes)}
    payload = json.dumps(semantic, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


@dataclass
class RunDir:
    path: Path

    @classmethod
    def for_config(cls, cfg: DictConfig) -> "RunDir":
        name = f"{cfg.model.name}-{cfg.method.name}-r{cfg.rank}-{cfg.dataset.name}-s{cfg.seed}-{config_hash(cfg)}"
        return cls(Path(cfg.paths.runs_dir) / name)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    def status(self) -> dict[str, Any]:
        file = self.path / STATUS_FILE
        return read_json(file) if file.exists() else {"state": "new"}

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics_file.exists()

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    def mark(self, state: str, **details: Any) -> None:
        atomic_write_json(self.path / STATUS_FILE, {"state": state, **details})

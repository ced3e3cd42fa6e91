"""Build-once cache for the models loralab pretrains itself.

A recipe (a frozen dataclass) names everything that determines the weights; its hash names the directory.
The model is written into a staging directory and renamed into place, so a reader (or a concurrent sweep
cell) never sees a half-written model. Builders of the same recipe take turns on a lock file, so processes
started together (sweep cells, parallel test workers) build it once and the others wait and reuse it; the
builder holding the lock also removes staging directories that killed builders of the recipe left behind.

Building runs inside the caller's process, typically between the run's ``set_seed`` and its adapter
initialisation, so it leaves the global random generators (Python, NumPy, torch CPU and CUDA) as it found
them: a run that pretrains the model first ends exactly as a run that finds it cached.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    return Path(os.environ.get("LORALAB_CACHE", Path.home() / ".cache" / "loralab"))


def recipe_key(recipe: Any, version: int) -> str:
    payload = json.dumps({**asdict(recipe), "version": version}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_once(name: str, recipe: Any, version: int, write: Callable[[Path], None],
               cache_root: str | Path | None = None) -> Path:
    """Directory ``<root>/embedded/<name>-<key>``, calling ``write(staging_dir)`` only if it is not built yet."""
    root = (Path(cache_root) if cache_root else default_cache_root()) / "embedded"
    target = root / f"{name}-{recipe_key(recipe, version)}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{target.name}.lock"):
        if (target / "config.json").exists():  # built by the process that held the lock before us
            return target
        _build(name, recipe, target, write, root)
    return target


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An advisory lock held for the block; released by the OS if the holder dies (no stale locks)."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Run the block on the global random generators, then put back the state they had before it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):  # torch CPU and, once initialised, every CUDA device
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging-"


def _build(name: str, recipe: Any, target: Path, write: Callable[[Path], None], root: Path) -> None:
    # We hold the recipe's lock, so any staging directory of this recipe belongs to a builder that died
    # (kill -9, OOM: its ``finally`` never ran).
    for leftover in root.glob(_staging_prefix(target) + "*"):
        log.warning("removing %s, left by an interrupted build of %s", leftover, target.name)
        shutil.rmtree(leftover, ignore_errors=True)
    log.info("pretraining the embedded %s once into %s", name, target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=root))
    try:
        with global_rng_untouched():
            write(staging)
        (staging / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the other writer finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

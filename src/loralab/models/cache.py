"""Build-once cache for the models loralab pretrains itself.

A recipe (a frozen dataclass) names everything that determines the weights; its hash names the directory.
The model is written into a staging directory and renamed into place, so a reader (or a concurrent sweep
cell) never sees a half-written model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

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
    log.info("pretraining the embedded %s once into %s", name, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        write(staging)
        (staging / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the other writer finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

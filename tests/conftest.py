"""Shared test setup: no hub access, one embedded-model cache per checkout, composed real configs."""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Hub look-ups fail fast instead of timing out, and the embedded models are pretrained once per checkout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("LORALAB_CACHE", str(ROOT / ".cache" / "loralab"))


def compose(*overrides: str, runs_dir: Path | None = None):
    """The real config tree, composed as ``python run.py <overrides>`` would, without running Hydra's app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.results_dir={runs_dir}"] if runs_dir is not None else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, "progress=false", *extra],
                             return_hydra_config=False)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="module")
def one_compute_thread() -> Iterator[None]:
    """One torch compute thread for in-process runs: on a small shared machine, idle OpenMP threads spinning
    against busy cores make tiny runs several times slower. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def script(name: str) -> ModuleType:
    """The command-line script ``scripts/<name>.py`` as a module, to call its ``main`` or functions in-process."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))

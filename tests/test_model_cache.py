"""The build-once cache of the embedded models: concurrent builders of one recipe build it once."""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

from loralab.models.cache import build_once


@dataclass(frozen=True)
class Recipe:
    width: int = 8


def _write(staging: Path) -> None:
    with open(staging.parent.parent / "builds.log", "a") as log:  # <cache>/builds.log, shared by all builders
        log.write("built\n")
    time.sleep(0.5)  # long enough for the other process to arrive while this one builds
    (staging / "config.json").write_text("{}")


def _build(cache: str, out: "multiprocessing.Queue[str]") -> None:
    out.put(str(build_once("toy", Recipe(), 1, _write, cache_root=cache)))


def test_concurrent_builders_build_once_and_share_the_result(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(tmp_path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    (built,) = {Path(out.get(timeout=5)) for _ in procs}
    assert (built / "config.json").is_file()
    assert (tmp_path / "builds.log").read_text() == "built\n"
    # nothing half-written is left beside the model (only the lock file)
    assert [p for p in (tmp_path / "embedded").iterdir() if p.suffix != ".lock"] == [built]


def test_a_built_recipe_is_not_rebuilt(tmp_path: Path) -> None:
    first = build_once("toy", Recipe(), 1, _write, cache_root=tmp_path)
    again = build_once("toy", Recipe(), 1, lambda staging: (_ for _ in ()).throw(AssertionError("rebuilt")),
                       cache_root=tmp_path)
    assert first == again
    assert build_once("toy", Recipe(width=9), 1, _write, cache_root=tmp_path) != first  # another recipe, another dir


def test_building_leaves_the_global_random_generators_as_it_found_them(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    def consume(staging: Path) -> None:  # what pretraining does: seed, then draw
        torch.manual_seed(123)
        random.seed(123)
        np.random.seed(123)
        torch.randn(10), random.random(), np.random.rand()
        (staging / "config.json").write_text("{}")

    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    expected = (torch.randn(3), random.random(), np.random.rand())
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    build_once("toy", Recipe(), 1, consume, cache_root=tmp_path)
    got = (torch.randn(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_a_killed_build_leaves_no_staging_directory_behind(tmp_path: Path) -> None:
    """A builder killed mid-build (no ``finally`` runs) leaves its staging directory; the next builder of the
    recipe, holding the lock, removes it."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_build_forever, args=(str(tmp_path),))
    proc.start()
    deadline = time.monotonic() + 120
    while not [p for p in (tmp_path / "embedded").glob(".*") if p.is_dir()]:  # the staging directory
        assert proc.is_alive() and time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    proc.kill()
    proc.join(timeout=60)
    built = build_once("toy", Recipe(), 1, _write, cache_root=tmp_path)
    assert [p for p in (tmp_path / "embedded").iterdir() if p.suffix != ".lock"] == [built]


def _build_forever(cache: str) -> None:
    build_once("toy", Recipe(), 1, lambda staging: time.sleep(600), cache_root=cache)

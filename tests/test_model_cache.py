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

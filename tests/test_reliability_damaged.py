"""A finished run whose files were damaged afterwards (a disk error, an edit, a partial copy) is not trusted:
re-running it stops with one line naming the file and the fix (``force_rerun=true``) and changes nothing;
``force_rerun=true`` then starts it over. The table builder leaves such runs out and lists them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import ROOT, compose
from loralab.io import read_json
from loralab.rundir import DamagedRunError, RunDir
from loralab.runner import run
from loralab.tables.tabulate import build_from_spec, collect_runs

SHORT = ["trainer.max_steps=2", "trainer.save_steps=2", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4"]

pytestmark = pytest.mark.usefixtures("one_compute_thread")


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# damage → (the file the error names, a phrase of the problem)
DAMAGE: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "garbage status.json": (lambda d: (d / "status.json").write_bytes(b"\x00garbage{"), "status.json",
                            "not valid JSON"),
    "status.json not an object": (lambda d: (d / "status.json").write_text("[]"), "status.json", "not an object"),
    "garbage metrics.json": (lambda d: (d / "metrics.json").write_text('{"run": {'), "metrics.json", "not valid JSON"),
    "metrics.json without scores": (lambda d: (d / "metrics.json").write_text("{}"), "metrics.json", "lacks"),
    "garbage config.yaml": (lambda d: (d / "config.yaml").write_text("model: [unclosed\n"), "config.yaml",
                            "unreadable"),
    "config.yaml not a config": (lambda d: (d / "config.yaml").write_text("hello\n"), "config.yaml", "not this run's"),
    "deleted adapter": (lambda d: shutil.rmtree(d / "adapter"), "adapter", "missing"),
    "bit-flipped adapter weights": (lambda d: _flip_middle_byte(d / "adapter" / "adapter_model.safetensors"),
                                    "adapter_model.safetensors", "SHA-256"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("finished") / "results"
    run(compose(*SHORT, runs_dir=results))
    return results


def _copy(results: Path, tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "results"
    shutil.copytree(results, target)
    (run_dir,) = (target / "runs").iterdir()
    return target, run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_finished_run_is_named_not_skipped(case: str, finished: Path, tmp_path: Path) -> None:
    results, run_dir = _copy(finished, tmp_path)
    damage, file, phrase = DAMAGE[case]
    damage(run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(DamagedRunError) as info:
        run(compose(*SHORT, runs_dir=results))
    message = str(info.value)
    assert file in message and phrase in message and "force_rerun=true" in message, message
    assert "\n" not in message
    assert _snapshot(run_dir) == before  # nothing was rewritten, marked or cleared


def test_force_rerun_starts_a_damaged_run_over(finished: Path, tmp_path: Path) -> None:
    results, run_dir = _copy(finished, tmp_path)
    (run_dir / "metrics.json").write_text("garbage")
    metrics = run(compose(*SHORT, "force_rerun=true", runs_dir=results))
    assert metrics["train"]["steps"] == 2
    assert read_json(run_dir / "status.json")["state"] == "finished"
    assert RunDir(run_dir).finished_metrics() == metrics


def test_the_command_line_names_the_damaged_file_in_one_line(finished: Path, tmp_path: Path) -> None:
    results, run_dir = _copy(finished, tmp_path)
    (run_dir / "status.json").write_text("{")
    proc = subprocess.run([sys.executable, "run.py", *SHORT, "progress=false", f"paths.results_dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-2000:]
    (line,) = [line for line in output.splitlines() if "DamagedRunError" in line]
    assert str(run_dir / "status.json") in line and "force_rerun=true" in line


def test_the_table_builder_leaves_damaged_runs_out_and_lists_them(finished: Path, tmp_path: Path) -> None:
    results, good = _copy(finished, tmp_path)
    for name, damage in (("metrics", lambda d: (d / "metrics.json").write_text("{")),
                         ("config", lambda d: (d / "config.yaml").write_text("model: [unclosed\n")),
                         ("status", lambda d: (d / "status.json").write_text("]"))):
        bad = good.with_name(f"{good.name}-{name}")
        shutil.copytree(good, bad)
        damage(bad)
    skipped: list[str] = []
    assert [r.path for r in collect_runs(results / "runs", skipped)] == [good]
    assert len(skipped) == 3 and all("force_rerun=true" in s for s in skipped)

    # the embedded experiment's table: its lora cell, composed with the overrides the run was made with
    spec = {"name": "embedded", "reference": None, "row_keys": ["method"], "filter": {}, "fields": {"seed": "seed"},
            "columns": [{"header": "EM", "task": "arith_word_problems", "metric": "exact_match", "scale": 100}]}
    table = build_from_spec(spec, results / "runs", root=ROOT, overrides=SHORT)
    assert "| lora |" in table
    left_out = "\n".join(line for line in table.splitlines() if line.startswith("Run left out"))
    for name in ("metrics.json", "config.yaml", "status.json"):
        assert name in left_out, table

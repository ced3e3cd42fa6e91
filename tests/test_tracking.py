"""``logger=wandb``: what reaches wandb, read back from the offline run with wandb's own reader.

wandb 0.31 stores an offline run as a transaction log (``offline-run-*/run-*.wandb``); ``wandb leet inspect``
is the installed package's reader of that log (``--json``: one JSON object per record; ``--summary --json``:
the run's name, state, exit code, tags, merged config and summary). Each run here is a real ``python run.py``
with no wandb credentials (so offline, the default), and the test checks every promise of
``loralab.tracking``: resolved config, run name = run directory name, group = sweep, tags, evaluation scores in
the summary, diagnostics in the history, and a finished run on every way out — success, a failing sweep cell,
SIGTERM and Ctrl-C. The sweep also shows the overall progress line after each cell.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT
from loralab.io import read_json

WANDB = str(Path(sys.executable).parent / "wandb")
TAGS = ["tiny_lm", "lora", "r8", "arith_shift"]


def env_without_credentials(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # no ~/.netrc either


def the_offline_run(run_dir: Path) -> Path:
    (offline,) = run_dir.glob("wandb/offline-run-*")
    assert any(offline.glob("run-*.wandb")), f"no transaction log in {offline}"
    return offline


def inspect_summary(offline: Path) -> dict[str, Any]:
    out = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(offline)], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def inspect_records(offline: Path) -> list[dict[str, Any]]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                         timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def check_identity(offline: Path, run_dir: Path, group: str | None) -> dict[str, Any]:
    """Name, group, tags and the resolved config of the wandb run of ``run_dir``; returns the summary view."""
    summary = inspect_summary(offline)
    records = inspect_records(offline)
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert summary["name"] == run_dir.name == run_record["display_name"]
    assert run_record.get("run_group") == group
    assert summary["tags"] == TAGS
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # every key of the run's resolved config, unchanged by the Trainer's own config.update()
    assert {k: summary["config"].get(k) for k in resolved} == json.loads(json.dumps(resolved))
    assert summary["config"]["learning_rate"] == resolved["trainer"]["learning_rate"]  # the Trainer's are added
    return summary


def exit_records(offline: Path) -> list[dict[str, Any]]:
    return [r["exit"] for r in inspect_records(offline) if r["type"] == "exit"]


@pytest.mark.slow
def test_sweep_cells_are_tracked_and_finished_and_progress_is_shown(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # three cells: trains; the same config again (skipped: already finished); a learning rate that diverges
    done = subprocess.run(
        [sys.executable, "run.py", "-m", "logger=wandb", "trainer.max_steps=4", "trainer.logging_steps=1",
         "eval.tasks.0.data.n=4", "progress=false", "diagnostics.enabled=true", "diagnostics.interval=2",
         "diagnostics.max_layers=1", "trainer.learning_rate=1e-3,1e-3,1e30", f"paths.results_dir={results}"],
        cwd=ROOT, env=env_without_credentials(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]  # one cell failed

    line = r"sweep: cell (\d)/3 done \((\d) finished, (\d) skipped, (\d) failed\), elapsed [0-9hms]+(.*)"
    progress = re.findall(line, done.stdout + done.stderr)
    assert [p[:4] for p in progress] == [("1", "1", "0", "0"), ("2", "1", "1", "0"), ("3", "1", "1", "1")]
    assert progress[0][4].startswith(", ETA ~") and progress[2][4] == ""

    (sweep_file,) = results.glob("hydra/multirun-*/sweep.json")
    sweep = read_json(sweep_file)
    cells = {c["cell"]: c for c in sweep["cells"]}
    finished, failed = Path(cells[0]["run_dir"]), Path(cells[2]["run_dir"])
    group = sweep_file.parent.name

    offline = the_offline_run(finished)
    summary = check_identity(offline, finished, group)
    assert summary["state"] == "finished" and [e["exit_code"] for e in exit_records(offline)] == [0]
    metrics = read_json(finished / "metrics.json")
    scores = metrics["eval"]["tasks"]["arith_word_problems"]
    for name in ("exact_match", "exact_match_stderr", "n"):
        assert summary["summary"][f"eval/arith_word_problems/{name}"] == scores[name]
    assert summary["summary"]["eval/protocol"] == metrics["eval"]["protocol"]
    assert summary["summary"]["cost/trainable_params"] == metrics["cost"]["trainable_params"]
    history = [r["history"]["item"] for r in inspect_records(offline) if r["type"] == "history"]
    diagnostic_steps = [h["train/global_step"] for h in history if "diag/align" in h]
    assert diagnostic_steps == [1, 2, 4]  # every diagnostics.interval steps, and step 1
    assert [h["train/global_step"] for h in history if "train/loss" in h] == [1, 2, 3, 4]
    assert (finished / "curves.png").is_file()  # the run's own picture, beside its wandb run

    offline = the_offline_run(failed)  # the diverging cell: its own run, finished as failed, not left open
    summary = check_identity(offline, failed, group)
    assert summary["state"] == "failed" and [e["exit_code"] for e in exit_records(offline)] == [2]
    assert "eval/protocol" not in summary["summary"]


def start_run(results: Path, home: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "run.py", "logger=wandb", "trainer.max_steps=500", "trainer.save_steps=1000",
             "trainer.logging_steps=1", "eval.tasks.0.data.n=4", "progress=false", f"paths.results_dir={results}"],
            cwd=ROOT, env=env_without_credentials(home), stdout=out, stderr=subprocess.STDOUT, text=True)


def logged_step(results: Path) -> int:
    return max((json.loads(line)["step"] for f in results.glob("runs/*/steps.jsonl")
                for line in f.read_text().splitlines() if line.endswith("}")), default=0)


@pytest.mark.slow
def test_sigterm_and_ctrl_c_finish_the_wandb_run(tmp_path: Path) -> None:
    # both side by side: each is signalled once it has logged a training step
    runs = {sig: (tmp_path / sig.name, tmp_path / f"{sig.name}.log") for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = {sig: start_run(results, tmp_path, log) for sig, (results, log) in runs.items()}
    deadline = time.monotonic() + 600
    pending = set(procs)
    while pending:
        for sig in list(pending):
            results, log = runs[sig]
            assert procs[sig].poll() is None, log.read_text()[-3000:]
            if logged_step(results) >= 2:
                procs[sig].send_signal(sig)
                pending.discard(sig)
        assert time.monotonic() < deadline, "no training step logged in time"
        time.sleep(0.05)
    codes = {sig: proc.wait(timeout=300) for sig, proc in procs.items()}
    assert codes[signal.SIGTERM] == 143, runs[signal.SIGTERM][1].read_text()[-3000:]
    assert codes[signal.SIGINT] != 0

    for sig, expected_exit in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        (run_dir,) = (runs[sig][0] / "runs").iterdir()
        assert read_json(run_dir / "status.json")["state"] == "interrupted"
        offline = the_offline_run(run_dir)
        summary = check_identity(offline, run_dir, group=None)  # a single run belongs to no sweep
        assert summary["state"] == "failed", sig.name
        assert [e["exit_code"] for e in exit_records(offline)] == [expected_exit], sig.name

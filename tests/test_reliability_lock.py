"""One process per run directory: a second process on the same config stops before writing anything, naming
the pid and host of the one that holds it; a lock left by a process that died is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from conftest import ROOT, compose
from loralab.rundir import LOCK_FILE, RunDir, RunLockedError
from loralab.runner import run
from loralab.training import trainer as trainer_module

SHORT = ["trainer.max_steps=3", "trainer.save_steps=2", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4"]

HOLD = "import sys, time; from loralab.rundir import RunDir\n" \
       "with RunDir(__import__('pathlib').Path(sys.argv[1])).locked():\n" \
       "    print('held', flush=True); time.sleep(600)\n"


def _hold(path: Path) -> subprocess.Popen:
    """Another process holding ``path``, as a live run would; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_directory_is_refused_naming_pid_and_host_then_taken_over_once_the_holder_dies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = RunDir(tmp_path / "run")
    holder = _hold(run_dir.path)
    try:
        for attempt in (run_dir.check_unlocked, lambda: run_dir.locked().__enter__()):
            with pytest.raises(RunLockedError) as info:
                attempt()
            message = str(info.value)
            assert f"pid {holder.pid} on host {socket.gethostname()}" in message and str(run_dir.path) in message
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: no chance to release or clean up
        holder.wait(timeout=60)
    assert json.loads((run_dir.path / LOCK_FILE).read_text())["pid"] == holder.pid  # the stale record is left
    run_dir.check_unlocked()
    with caplog.at_level("WARNING", logger="loralab"), run_dir.locked():  # the kernel released it: taken over
        assert json.loads((run_dir.path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"from pid {holder.pid}" in caplog.text
    assert (run_dir.path / LOCK_FILE).read_text() == ""  # released cleanly this time
    with run_dir.locked():
        pass


def test_a_second_command_on_a_live_run_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_dir = RunDir.for_config(compose(*SHORT, runs_dir=results)).path
    holder = _hold(run_dir)
    try:
        proc = subprocess.run([sys.executable, "run.py", *SHORT, "progress=false", f"paths.results_dir={results}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-2000:]
    (line,) = [line for line in output.splitlines() if "RunLockedError" in line]
    assert f"pid {holder.pid} on host {socket.gethostname()}" in line
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # no status, no config, no log


class _TryToEnter(TrainerCallback):
    """While the run trains, a second entry into its directory (as a twin process would try) is refused."""

    def __init__(self, path: Path, sink: list[str]) -> None:
        self.path, self.sink = path, sink

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            try:
                RunDir(self.path).check_unlocked()
            except RunLockedError as err:
                self.sink.append(str(err))


@pytest.mark.usefixtures("one_compute_thread")
def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose(*SHORT, runs_dir=tmp_path)
    path = RunDir.for_config(cfg).path
    refused: list[str] = []
    original = trainer_module.build_trainer
    monkeypatch.setattr("loralab.runner.build_trainer", lambda *a, **k: original(
        *a, **{**k, "extra_callbacks": [*k.get("extra_callbacks", ()), _TryToEnter(path, refused)]}))
    run(cfg)
    assert refused and f"pid {os.getpid()}" in refused[0]
    RunDir(path).check_unlocked()  # released once the run ended
    assert (path / LOCK_FILE).read_text() == ""
    again = run(compose(*SHORT, runs_dir=tmp_path))  # finished: skipped, with the lock free
    assert again["run"]["name"] == path.name


def test_in_a_multi_process_launch_only_rank_0_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun starts every rank on the same config: the other ranks must not be refused as twins."""
    run_dir = RunDir(tmp_path / "run")
    monkeypatch.setenv("RANK", "0")
    with run_dir.locked():
        monkeypatch.setenv("RANK", "1")
        run_dir.check_unlocked()
        with run_dir.locked():
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunLockedError):
            run_dir.check_unlocked()

"""Sandbox verdicts, limits, mode choice and the verdict channel (hostile programs: test_sandbox_hostile.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from loralab.errors import ConfigError
from loralab.evaluation import sandbox
from loralab.evaluation.sandbox import (
    ENV_VAR,
    SandboxLimits,
    SandboxUnavailable,
    detect_isolation,
    run_program,
    run_programs,
)
from sandbox_hostile import processes_with, user_namespaces_work

ROOT_USER = os.geteuid() == 0
ISOLATING = "namespaces" if ROOT_USER else "userns"  # the mode auto picks for this user


def _isolation_or_none() -> str | None:
    try:
        return detect_isolation().mode
    except SandboxUnavailable:
        return None


NEEDS_ISOLATION = pytest.mark.skipif(_isolation_or_none() is None, reason="no isolating mode on this machine")
# Every mode this user can run in-process: the isolating one and plain (userns as root: see the hostile suite).
MODES = [pytest.param(ISOLATING, marks=NEEDS_ISOLATION), "plain"]
FAST = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=512, max_procs=8, max_file_mb=1)


def _limits(hook: bool = True, **kw: float) -> SandboxLimits:
    return dataclasses.replace(FAST, audit_hook=hook, **kw)


@pytest.fixture
def fresh_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_VAR, raising=False)
    sandbox._detect.cache_clear()
    yield
    sandbox._detect.cache_clear()


# ---------------------------------------------------------------------------------------- choosing a mode
def test_the_isolating_mode_is_chosen_wherever_the_kernel_allows_it(fresh_detection: None) -> None:
    if ROOT_USER:
        works = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"]).returncode == 0
    else:
        works = user_namespaces_work()
    if not works:
        with pytest.raises(SandboxUnavailable, match=f"{ENV_VAR}=plain"):
            detect_isolation()
        return
    isolation = detect_isolation()  # i.e. our jail passes its probe, not just the primitives
    assert isolation.mode == ISOLATING and "namespaces" in isolation.note


def test_without_isolation_code_is_refused_in_one_line_naming_the_opt_in(
        fresh_detection: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare(1)
    with pytest.raises(SandboxUnavailable) as missing:
        detect_isolation()
    sandbox._detect.cache_clear()
    monkeypatch.undo()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(sandbox, "probe", lambda mode: sandbox.Verdict("error", "sandbox setup failed: EPERM"))
    with pytest.raises(SandboxUnavailable) as refused:
        detect_isolation()
    for err in (missing.value, refused.value):
        assert "\n" not in str(err) and f"set {ENV_VAR}=plain" in str(err) and isinstance(err, ConfigError)
    assert "unshare(1)" in str(missing.value) and "EPERM" in str(refused.value)


def test_plain_runs_only_when_named_and_says_so(fresh_detection: None, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ENV_VAR, "plain")
    with caplog.at_level(logging.WARNING, logger="loralab.evaluation.sandbox"):
        isolation = detect_isolation()
    assert isolation.mode == "plain" and "NOT ISOLATED" in isolation.note
    assert any("WITHOUT isolation" in r.getMessage() for r in caplog.records)
    assert run_program("assert True", _limits()).isolation == "plain"
    monkeypatch.setenv(ENV_VAR, "none")
    with pytest.raises(ConfigError, match=r"LORALAB_SANDBOX='none'; valid: auto .*plain"):
        detect_isolation()


@pytest.mark.skipif(not ROOT_USER, reason="root only")
def test_root_is_not_offered_user_namespaces(fresh_detection: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "userns")
    with pytest.raises(SandboxUnavailable, match="RLIMIT_NPROC"):
        detect_isolation()
    with pytest.raises(SandboxUnavailable, match="as root use namespaces"):
        run_program("assert True", mode="userns")


# --------------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("mode", MODES)
def test_ordinary_outcomes_map_to_verdicts(mode: str) -> None:
    sources = ["assert sum([1, 2]) == 3", "assert 1 == 2, 'boom'", "def f(:\n", "import sys; sys.exit(0)",
               "import os; os._exit(0)", "open('s.txt', 'w').write('x'); assert open('s.txt').read() == 'x'",
               "import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'x')",
               "import numpy\nassert numpy.arange(4).sum() == 6",  # the evaluator's site-packages are there
               "print('x' * 100000)\nimport sys\nprint('noise', file=sys.stderr)"]
    got = run_programs(sources, _limits(), workers=3, mode=mode)  # type: ignore[arg-type]
    assert [v.status for v in got] == ["passed", "failed", "failed", "failed", "failed", "passed", "passed",
                                       "passed", "passed"], got
    assert got[1].reason == "AssertionError: boom"
    assert got[2].reason.startswith("SyntaxError")
    assert "exited before its tests finished" in got[3].reason and "exited before" in got[4].reason
    assert {v.isolation for v in got} == {mode}


@pytest.mark.parametrize("mode", MODES)
def test_a_pass_needs_the_nonce_the_harness_receives_after_the_program(mode: str) -> None:
    """The nonce waits on the program's channel as a passed descriptor. Code written against this harness
    can take it early and forge a pass: the residual that sandbox.py's docstring states, pinned here so the
    statement stays true. Anything less deliberate (reading the channel's bytes) destroys it instead."""
    # every descriptor the program holds: the channel's number is the parent's, which can be high in a busy process
    forge = """import array, os, socket
for fd in sorted(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2):
    try:
        s = socket.socket(fileno=os.dup(fd))
        _, fds, _, _ = socket.recv_fds(s, 1, 1, socket.MSG_DONTWAIT)
    except OSError:
        continue
    if fds:
        os.write(fd, b"P" + os.read(fds[0], 64))
        os._exit(0)
raise AssertionError("no descriptor found")
"""
    drain = ("import os\nfor fd in sorted(fd for fd in map(int, os.listdir('/proc/self/fd')) if fd > 2):\n    try:\n"
             "        os.read(fd, 100)\n    except OSError:\n        pass\n")
    got = run_programs([forge, drain, drain + "assert False"], _limits(hook=False), workers=3,
                       mode=mode)  # type: ignore[arg-type]
    assert got[0].status == "passed"  # the residual
    assert got[1].status == "failed" and "verdict channel was tampered with" in got[1].reason
    assert got[2].status == "failed"


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_hits_wall_clock_then_cpu_limit(mode: str) -> None:
    wall = run_program("while True:\n    pass\n", _limits(timeout_s=1.5, cpu_s=30), mode=mode)  # type: ignore[arg-type]
    assert wall.status == "timeout" and "wall-clock" in wall.reason and wall.duration_s < 10
    cpu = run_program("while True:\n    pass\n", _limits(timeout_s=60, cpu_s=1), mode=mode)  # type: ignore[arg-type]
    assert cpu.status == "timeout" and "CPU-time" in cpu.reason and cpu.duration_s < 30


@pytest.mark.parametrize("mode", MODES)
def test_timeout_kills_the_programs_children(mode: str) -> None:
    marker = f"loralab-straggler-{secrets.token_hex(6)}"
    src = f"""import os, time
if os.fork() == 0:
    os.execv("/bin/sleep", ["{marker}", "60"])
time.sleep(60)
"""
    verdict = run_program(src, _limits(hook=False, timeout_s=2), mode=mode)  # type: ignore[arg-type]
    assert verdict.status == "timeout"
    time.sleep(0.2)
    assert processes_with(marker) == []


@NEEDS_ISOLATION
def test_hostile_programs_do_not_disturb_the_rest_of_the_batch(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("intact")
    good = [f"assert {i} * {i} == {i * i}" for i in range(3)]
    hostile = [
        "while True:\n    pass\n",
        "import os\nfor _ in range(10000):\n    os.fork()\n",
        "x = bytearray(8 * 2**30)\n",
        "import socket; socket.create_connection(('127.0.0.1', 9), timeout=2)",
        f"import os; os.remove({str(sentinel)!r})",
        "import os; assert os.environ['HOME'] == '/root'",
    ]
    batch = [good[0], *hostile[:3], good[1], *hostile[3:], good[2]]
    got = run_programs(batch, _limits(timeout_s=3), workers=3)
    assert [got[0].status, got[4].status, got[-1].status] == ["passed"] * 3
    hostile_verdicts = got[1:4] + got[5:-1]
    assert all(v.status in ("failed", "timeout") for v in hostile_verdicts), hostile_verdicts
    assert got[1].status == "timeout" and sentinel.read_text() == "intact"


@pytest.mark.parametrize("mode", MODES)
def test_scratch_dirs_are_removed(mode: str) -> None:
    root = Path(tempfile.gettempdir())
    before = set(root.glob("loralab-sbx-*"))
    # Leaves behind files in a mode-000 tree (plain mode writes them to the host).
    src = "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)\n"
    assert run_program(src, _limits(), mode=mode).passed  # type: ignore[arg-type]
    assert set(root.glob("loralab-sbx-*")) - before == set()

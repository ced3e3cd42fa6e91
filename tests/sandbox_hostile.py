"""Hostile programs and the host-side checks that prove each one was contained.

Run as a script, it is the sandbox's parent for one mode and prints one JSON record per program:

    python tests/sandbox_hostile.py MODE [--as-uid UID]

so a program that kills its parent, or every process it may signal, takes down this runner and not pytest.
With ``--as-uid`` (root only) the runner first becomes that unprivileged uid, in a private mount namespace
where the Python install and the repository stay reachable even if they sit under a 0700 /root, and then
re-executes itself: the sandbox then meets a genuinely non-root evaluator.

Each program asserts that its attack worked, so a contained attack fails; ``must_fail=False`` marks the few
whose attack succeeds harmlessly inside the sandbox (a file in its own /dev/shm, a daemon in its own PID
namespace), judged by the host checks alone. ``plain=True`` marks what plain mode claims to contain.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET_VAR = "LORALAB_HOSTILE_SECRET"  # the test puts it in this runner's initial environment
# To the kernel a uid is a user: no account is needed, and none is left behind on the machine. Below the
# sandbox's own per-run uids.
UNPRIVILEGED_UID = 1_899_999_999


@dataclass(frozen=True)
class Hostile:
    name: str
    source: str
    must_fail: bool = True
    plain: bool = False  # plain mode claims to contain it
    reason: str = ""  # the failure it must end with (e.g. the program outlived its attack on its parent)


# Spawns a process through _posixsubprocess.fork_exec, which raises no audit event (layouts of 3.10-3.13).
SPAWN = """
import os, _posixsubprocess
def spawn(argv, setsid=False):
    r, w = os.pipe()
    base = [[os.fsencode(a) for a in argv], [os.fsencode(argv[0] if "/" in argv[0] else "/bin/sleep")], True,
            (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, True, setsid]
    for tail in ([-1, None, None, None, -1, None], [-1, None, None, None, -1, None, False],
                 [None, None, None, -1, None]):
        try:
            pid = _posixsubprocess.fork_exec(*base, *tail)
            break
        except TypeError:
            continue
    os.close(w)
    err = os.read(r, 1000)
    os.close(r)
    if err:
        raise OSError(err.decode())
    return pid
"""
# Knows the harness's framing (b"P" + nonce sent to the evaluator; earlier, b"pass:" + nonce at the start of a
# status file); all it lacks is the nonce.
FORGE = """
import os
def open_fds():
    # every descriptor held, however high its number (a busy evaluator hands down high ones)
    try:
        return sorted(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2)
    except OSError:
        return range(3, 1024)
def claim(candidates):
    for x in candidates:
        for fd in open_fds():
            for send in (lambda: os.write(fd, b"P" + x),
                         lambda: (os.ftruncate(fd, 0), os.pwrite(fd, b"pass:" + x, 0))):
                try:
                    send()
                except OSError:
                    pass
    os._exit(0)
"""
FAILING_TESTS = "\ndef check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n"
WRONG = "def add(a, b):\n    return a - b\n"


def _forge(name: str, body: str) -> Hostile:
    """A wrong solution, then the forgery, then tests it fails: only a forged verdict could pass it."""
    return Hostile(name, FORGE + WRONG + body + FAILING_TESTS, plain=True)


# Ordinary programs run in the same batch, so each mode's hostile verdicts come with proof that honest
# programs still pass and fail as they should there: (source, status, start of the reason).
ORDINARY = [
    ("assert sum([1, 2]) == 3", "passed", ""),
    ("assert 1 == 2, 'boom'", "failed", "AssertionError: boom"),
    ("def f(:\n", "failed", "SyntaxError"),
    ("open('s.txt', 'w').write('x')\nassert open('s.txt').read() == 'x'", "passed", ""),
    ("import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'x')", "passed", ""),
    ("import math, hashlib, collections, itertools, re\nassert math.isclose(math.pi, 3.14159, rel_tol=1e-5)",
     "passed", ""),
]

HOSTILE = [
    # --- processes -----------------------------------------------------------------------------------
    Hostile("fork_bomb", """import os
n = 0
for _ in range(3000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.execv("/bin/sleep", ["{marker}-fork_bomb", "30"])
        finally:
            os._exit(1)
    n += 1
assert n > 200, "only %d forks" % n
"""),
    Hostile("posixsubprocess_bomb", SPAWN + """
n = 0
for _ in range(3000):
    try:
        spawn(["{marker}-posixsubprocess_bomb", "30"])
    except OSError:
        break
    n += 1
assert n > 200, "only %d processes" % n
"""),
    Hostile("thread_bomb", """import threading, time
n = 0
for _ in range(3000):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    n += 1
""", plain=True),
    Hostile("posixsubprocess_shell", SPAWN + """
pid = spawn(["/bin/sh", "-c", "echo x > {outside}/{name}.txt; echo x > {open_dir}/{name}.txt"])
os.waitpid(pid, 0)
assert os.path.exists("{outside}/{name}.txt") or os.path.exists("{open_dir}/{name}.txt"), "nothing written"
"""),
    Hostile("subprocess_run", """import os, subprocess
subprocess.run(["/bin/sh", "-c", "touch {open_dir}/{name}.txt"], check=True)
assert os.path.exists("{open_dir}/{name}.txt")
"""),
    Hostile("os_system", """import os
assert os.system("touch {open_dir}/{name}.txt") == 0
"""),
    Hostile("setsid_daemon", """import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["{marker}-setsid_daemon", "30"])
    os._exit(0)
os.wait()
""", must_fail=False),
    Hostile("posixsubprocess_daemon", SPAWN + """
spawn(["{marker}-posixsubprocess_daemon", "30"], setsid=True)
""", must_fail=False),
    Hostile("kill_parent", """import os, signal, time
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(0.5)
raise AssertionError("parent survived")
""", reason="parent survived"),
    Hostile("kill_everything", """import os, signal, time
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass  # nothing it may signal
time.sleep(0.5)
raise AssertionError("everything survived")
""", reason="everything survived"),
    Hostile("kill_victim_by_pid", """import os, signal
os.kill({victim}, signal.SIGKILL)
"""),
    Hostile("kill_victim_by_scan", """import os, signal
killed = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if b"{marker}-victim" in open("/proc/%s/cmdline" % pid, "rb").read():
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
    except OSError:
        pass
assert killed, "victim not found"
"""),
    Hostile("ctypes_kill", """import ctypes, time
libc = ctypes.CDLL(None)
libc.kill({victim}, 9)
libc.kill(libc.getppid(), 9)
time.sleep(0.5)
raise AssertionError("ctypes kill survived")
""", reason="ctypes kill survived"),
    # --- filesystem ----------------------------------------------------------------------------------
    Hostile("write_outside", "open('{outside}/{name}.txt', 'w').write('x')\n"),
    Hostile("write_world_writable", "open('{open_dir}/{name}.txt', 'w').write('x')\n"),
    Hostile("dir_fd_write", """import os
d = os.open("{outside}", os.O_RDONLY)
f = os.open("{name}.txt", os.O_WRONLY | os.O_CREAT, dir_fd=d)
os.write(f, b"x")
"""),
    Hostile("symlink_escape", """import os
os.symlink("{open_dir}", "link")
open("link/{name}.txt", "w").write("x")
"""),
    Hostile("delete_sentinel", "import os\nos.remove('{sentinel}')\n"),
    Hostile("truncate_sentinel", "import os\nos.truncate('{sentinel}', 0)\n"),
    Hostile("read_repository", "assert 'loralab' in open('{repo}/pyproject.toml').read()\n"),
    Hostile("write_dev_shm", "open('/dev/shm/{marker}-shm', 'w').write('x')\n", must_fail=False),
    Hostile("ctypes_remount_usr", """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.unshare(0x10000000 | 0x00020000)  # a user + mount namespace of its own, where allowed
libc.mount(None, b"/usr", None, 32 | 4096, None)  # remount /usr read-write
open("/usr/{marker}-usr", "w").write("x")
"""),
    Hostile("disk_fill", """import os
total, i = 0, 0
while total < {disk_mb} * 4 << 20:
    with open("fill%d" % i, "wb") as f:
        f.write(b"x" * ({file_mb} << 20))
    total += {file_mb} << 20
    i += 1
"""),
    Hostile("disk_fill_everywhere", """import os
total, i = 0, 0
while total < {disk_mb} * 4 << 20:
    for d in (".", "/tmp", "/dev/shm", os.environ.get("TMPDIR", ".")):
        with open(os.path.join(d, "{marker}-fill%d" % i), "wb") as f:
            f.write(b"x" * (1 << 20))
        total += 1 << 20
        i += 1
"""),
    Hostile("inode_fill", """import os
for i in range(200000):
    open("f%d" % i, "w").close()
"""),
    Hostile("memory_bomb", "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n", plain=True),
    Hostile("cpu_loop", "while True:\n    pass\n", plain=True),
    Hostile("big_file", "open('big.bin', 'wb').write(b'x' * ({file_mb} * 2 << 20))\n", plain=True),
    # --- secrets and network -------------------------------------------------------------------------
    Hostile("environ_own", "import os\nassert '{secret_var}' in os.environ\n", plain=True),
    Hostile("environ_parent", """import hashlib, os
env = open("/proc/%d/environ" % os.getppid(), "rb").read().split(b"\\0")
assert any(hashlib.sha256(e).hexdigest() == "{secret_hash}" for e in env), "secret not found"
"""),
    Hostile("environ_scan", """import hashlib, os
found = False
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        env = open("/proc/%s/environ" % pid, "rb").read().split(b"\\0")
    except OSError:
        continue
    found = found or any(hashlib.sha256(e).hexdigest() == "{secret_hash}" for e in env)
assert found, "secret not found"
"""),
    Hostile("tcp_loopback", """import socket
s = socket.create_connection(("127.0.0.1", {tcp_port}), timeout=3)
s.sendall(b"tcp_loopback")
"""),
    Hostile("udp_loopback", """import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"udp_loopback", ("127.0.0.1", {udp_port}))
"""),
    Hostile("unix_socket", """import socket
s = socket.socket(socket.AF_UNIX)
s.connect("{unix_path}")
s.sendall(b"unix_socket")
"""),
    Hostile("abstract_socket", """import socket
s = socket.socket(socket.AF_UNIX)
s.connect("\\0{abstract}")
s.sendall(b"abstract_socket")
"""),
    # --- forged verdicts -----------------------------------------------------------------------------
    _forge("forge_os_exit", "os._exit(0)\n"),
    _forge("forge_sys_exit", "import sys\nsys.exit(0)\n"),
    _forge("forge_exit_builtin", "exit()\n"),
    _forge("forge_print", "import sys\nprint('passed')\nprint('PASSED: all tests passed')\nsys.stdout.flush()\n"
                          "os._exit(0)\n"),
    _forge("forge_atexit", "import atexit\natexit.register(os._exit, 0)\n"),
    _forge("forge_frames", """import re, sys
found = set()
frame = sys._getframe()
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for v in list(scope.values()):
            text = v.decode("latin-1") if isinstance(v, bytes) else v
            if isinstance(text, str) and re.fullmatch(r"[0-9a-f]{{32}}", text):
                found.add(text.encode("latin-1"))
    frame = frame.f_back
claim(found or [b"0" * 32])
"""),
    _forge("forge_proc_and_files", """import glob, re
found = set()
for path in ["/proc/self/cmdline", "/proc/self/environ", "/proc/1/cmdline", "/proc/1/environ",
             *glob.glob("*"), *glob.glob("/tmp/*"), *glob.glob("/proc/self/fd/*")]:
    try:
        with open(path, "rb") as f:
            os.set_blocking(f.fileno(), False)
            found.update(re.findall(rb"[0-9a-f]{{32}}", f.read(1 << 20) or b""))
    except (OSError, TypeError):
        pass
claim(found or [b"0" * 32])
"""),
    _forge("forge_echo_fds", """found = []
for fd in open_fds():
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 4096)
    except OSError:
        continue
    for target in open_fds():
        try:
            os.write(target, data)
        except OSError:
            pass
os._exit(0)
"""),
]


# ------------------------------------------------------------------------------------------- the runner
class Listener:
    """Records whatever reaches a socket the sandbox must not reach."""

    def __init__(self, family: int, kind: int, address: object) -> None:
        self.sock = socket.socket(family, kind)
        self.sock.bind(address)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                if self.sock.type == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.settimeout(1)
                    self.received.append(conn.recv(100) or b"<connected>")
                    conn.close()
                else:
                    self.received.append(self.sock.recv(100))
            except (socket.timeout, OSError):
                continue

    def close(self) -> list[bytes]:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        return self.received


def user_namespaces_work() -> bool:
    """The kernel primitive alone, for an unprivileged user (root checks it for an unused uid)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    raw = [unshare, "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "true"]
    if os.geteuid() == 0:
        raw = ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}", "--clear-groups", *raw]
    return subprocess.run(raw, capture_output=True).returncode == 0


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def run_suite(mode: str, names: list[str] | None = None) -> dict[str, object]:
    """Run the programs (default: all that `mode` claims to contain) and check the host afterwards."""
    sys.path.insert(0, str(ROOT / "src"))
    from loralab.evaluation.sandbox import SandboxLimits, detect_isolation, run_programs

    secret = os.environ[SECRET_VAR]
    marker = f"loralab-hostile-{secrets.token_hex(6)}"
    base = Path(tempfile.mkdtemp(prefix="loralab-hostile-"))
    outside, open_dir = base / "private", base / "open"
    outside.mkdir(mode=0o700)
    open_dir.mkdir()
    open_dir.chmod(0o777)  # like /tmp: file permissions alone would let anyone write here
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("intact")
    listeners = {"tcp": Listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
                 "udp": Listener(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)),
                 "unix": Listener(socket.AF_UNIX, socket.SOCK_STREAM, str(open_dir / "s.sock")),
                 "abstract": Listener(socket.AF_UNIX, socket.SOCK_STREAM, f"\0{marker}")}
    os.chmod(open_dir / "s.sock", 0o777)
    victim = subprocess.Popen([f"{marker}-victim", "60"], executable="/bin/sleep")
    wanted = {"timeout_s": 6, "cpu_s": 2, "memory_mb": 512, "max_procs": 16, "max_file_mb": 4, "max_disk_mb": 16,
              "audit_hook": mode == "plain"}
    limits = SandboxLimits(**{k: v for k, v in wanted.items() if k in SandboxLimits.__dataclass_fields__})
    ctx = {"marker": marker, "outside": outside, "open_dir": open_dir, "sentinel": sentinel, "repo": ROOT,
           "victim": victim.pid, "secret_var": SECRET_VAR,
           "secret_hash": hashlib.sha256(f"{SECRET_VAR}={secret}".encode()).hexdigest(),
           "tcp_port": listeners["tcp"].sock.getsockname()[1], "udp_port": listeners["udp"].sock.getsockname()[1],
           "unix_path": open_dir / "s.sock", "abstract": marker, "disk_mb": wanted["max_disk_mb"],
           "file_mb": limits.max_file_mb}
    chosen = [h for h in HOSTILE if h.name in names] if names else [h for h in HOSTILE if mode != "plain" or h.plain]
    try:
        sources = [h.source.format(**ctx, name=h.name) for h in chosen] + [src for src, _, _ in ORDINARY]
        verdicts = run_programs(sources, limits, workers=4, mode=mode)  # type: ignore[arg-type]
        ordinary = [{"source": src, "status": v.status, "reason": v.reason, "expected": [status, reason]}
                    for (src, status, reason), v in zip(ORDINARY, verdicts[len(chosen):])]
        time.sleep(0.3)
        left = {h.name: processes_with(f"{marker}-{h.name}") for h in chosen}
        received = {k: listener.close() for k, listener in listeners.items()}
        victim_alive = victim.poll() is None
        records = []
        for h, v in zip(chosen, verdicts):
            escapes = [f"wrote {d / f}" for d in (outside, open_dir) for f in os.listdir(d) if f == f"{h.name}.txt"]
            escapes += [f"{len(left[h.name])} processes still running"] if left[h.name] else []
            escapes += [f"{k} listener got {data}" for k, got in received.items() for data in got
                        if data in (h.name.encode(), b"<connected>")]
            if h.must_fail and v.passed:
                escapes.append("passed")
            if h.reason and h.reason not in v.reason:
                escapes.append(f"ended with {v.status} {v.reason!r}, not {h.reason!r}")
            records.append({"name": h.name, "status": v.status, "reason": v.reason,
                            "isolation": getattr(v, "isolation", ""),
                            "escapes": escapes})
        host = [f"wrote {d / f}" for d in (outside, open_dir) for f in os.listdir(d)
                if f not in ("sentinel.txt", "s.sock") and f[:-4] not in {h.name for h in chosen}]
        host += [] if sentinel.exists() and sentinel.read_text() == "intact" else ["sentinel damaged"]
        host += [] if victim_alive else ["victim killed"]
        host += [f"{p} exists" for p in (Path("/dev/shm") / f"{marker}-shm", Path("/usr") / f"{marker}-usr")
                 if p.exists()]
        host += [f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith(marker)]
        # Controls: each detector sees the real thing, so "nothing found" above means something.
        control = subprocess.Popen([f"{marker}-control", "30"], executable="/bin/sleep", start_new_session=True)
        deadline = time.monotonic() + 5
        while not processes_with(f"{marker}-control") and time.monotonic() < deadline:
            time.sleep(0.05)  # until it has exec'd
        controls = {"process detector": bool(processes_with(f"{marker}-control"))}
        control.kill()
        control.wait()
        probe = Listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        with socket.create_connection(probe.sock.getsockname(), timeout=3) as s:
            s.sendall(b"control")
        time.sleep(0.3)
        controls["tcp listener"] = probe.close() == [b"control"]
        scan = HOSTILE[[h.name for h in HOSTILE].index("environ_scan")].source.format(**ctx, name="")
        controls["environ scan"] = subprocess.run([sys.executable, "-c", scan], capture_output=True).returncode == 0
        isolation = detect_isolation()
        return {"uid": os.geteuid(), "detected": isolation.mode, "records": records, "ordinary": ordinary,
                "host": host,
                "controls": controls}
    finally:
        victim.kill()
        victim.wait()
        for pid in processes_with(marker):  # anything an escape left behind
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for path in (Path("/dev/shm") / f"{marker}-shm", Path("/usr") / f"{marker}-usr"):
            path.unlink(missing_ok=True)
        for name in os.listdir("/tmp"):
            if name.startswith(marker):
                os.unlink(os.path.join("/tmp", name))
        subprocess.run(["rm", "-rf", str(base)], check=False)


# ------------------------------------------------------------------------------ becoming a non-root user
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH, CLONE_NEWNS = 4096, 16384, 1 << 18, 2, 0x00020000


def become(uid: int) -> None:
    """As root: enter a private mount namespace where the Python install and this repository stay reachable
    for `uid` (directories on their path that others cannot enter are covered by a tmpfs and the needed
    directory is bound back), then drop to `uid`. The caller re-executes, so the process is an ordinary one
    of `uid` (its /proc entries owned by it, not root's)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda v: None if v is None else os.fsencode(v)  # noqa: E731
        if libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
            raise OSError(ctypes.get_errno(), f"mount {dst}")

    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    needed = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, ROOT,
                                                   os.path.dirname(os.path.realpath(sys.executable)))})
    needed = [p for p in needed if not any(p.startswith(q + "/") for q in needed)]
    hidden = []  # (first ancestor others cannot enter, needed dir, staging dir)
    for path in needed:
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                hidden.append((ancestor, path, tempfile.mkdtemp()))
                break
    for _, path, stage in hidden:
        mount(path, stage, None, MS_BIND | MS_REC)
    for blocker in sorted({b for b, _, _ in hidden}):
        mount("tmpfs", blocker, "tmpfs", 0, "mode=755,size=1m")
    for _, path, stage in hidden:
        os.makedirs(path, exist_ok=True)
        mount(stage, path, None, MS_BIND | MS_REC)
        libc.umount2(os.fsencode(stage), MNT_DETACH)
        os.rmdir(stage)
    os.chdir("/")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["namespaces", "userns", "plain"])
    parser.add_argument("--as-uid", type=int, help="(root) become this unprivileged uid first")
    parser.add_argument("--names", help="comma-separated programs to run instead of those the mode claims")
    args = parser.parse_args()
    if args.as_uid is not None:
        become(args.as_uid)
        argv = [sys.executable, "-B", __file__, args.mode, *(["--names", args.names] if args.names else [])]
        os.execve(sys.executable, argv, {**os.environ, "HOME": "/tmp"})
    print(json.dumps(run_suite(args.mode, args.names.split(",") if args.names else None)))


if __name__ == "__main__":
    main()

"""The sandbox's bootstrap, run as ``python -I -B boot.py <spec>`` (a copy of this file) by
:mod:`loralab.evaluation.sandbox`. Standard library only: after ``pivot_root`` the child sees nothing but the
Python install and the system directories.

In the namespace modes it starts as pid 1 of fresh mount/net/pid/ipc/uts namespaces (made by ``unshare(1)``,
in ``userns`` mode inside a new user namespace where it is root), then:

1. builds a new root: a size-limited tmpfs (the only writable filesystem: ``/sandbox``, ``/tmp``,
   ``/dev/shm``) holding read-only binds of the system directories and the Python install, a new ``/proc``
   for the new PID namespace and a few device nodes; ``pivot_root`` and detaching the old root make
   everything else on the host (the repository, ``/tmp``, ``/run``, unix sockets, home directories)
   unreachable;
2. drops privileges for good: ``namespaces`` (started by root) becomes a per-run unprivileged uid;
   ``userns`` stays the namespace's uid 0 (the only id mapped) with an empty capability set, bounding set
   and ambient set, locked securebits and no further user namespaces. Both set ``PR_SET_NO_NEW_PRIVS``;
3. forks the program off pid 1 (the kernel shields a namespace's init from signals sent inside it, SIGXCPU
   included), sets its rlimits and runs it.

``plain`` mode skips all that but the rlimits: it runs in the evaluator's namespaces, with a scrubbed
environment and the audit hook.

The verdict: the program passes only if it runs to its end without raising and the bootstrap then writes
``b"P" + nonce`` back to the evaluator. The nonce sits in a pipe whose descriptor waits, unreceived, on the unix
socket to the evaluator until the program's last statement has returned; it is in no file, argument,
environment variable or memory of the process before that (see :mod:`loralab.evaluation.sandbox` for what that
does and does not guarantee).
"""

import ctypes
import json
import os
import platform
import re
import resource
import socket
import sys
import traceback

WORK = "/sandbox"  # the program's working directory inside the namespace modes

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC = 4096, 16384
MNT_DETACH = 2
# Per-mount flags that a user namespace may not clear, so a read-only remount must carry them over.
_LOCKABLE = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "nosuid": MS_NOSUID, "noatime": 1024, "nodiratime": 2048,
             "relatime": 1 << 21}
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 38, 24, 28, 47
# SECBIT_NOROOT | _LOCKED | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | _LOCKED
_SECUREBITS = 0x01 | 0x02 | 0x20 | 0x40 | 0x80
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(src, dst, fstype, flags, data=None):
    enc = lambda v: None if v is None else os.fsencode(v)  # noqa: E731
    _check(_libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + dst)


def _mountpoints():
    """(mount point, per-mount options) of this mount namespace, in mount order."""
    with open("/proc/self/mountinfo", "rb") as f:
        rows = [line.split() for line in f]
    unescape = lambda m: bytes([int(m.group(1), 8)])  # mountinfo writes " " as \040  # noqa: E731
    return [(os.fsdecode(re.sub(rb"\\([0-7]{3})", unescape, r[4])), r[5].decode().split(",")) for r in rows]


def _mount_point(root, tmpfs, inside):
    """mkdir -p ``root + inside``, refusing to step through a symlink or onto another mount: a mount point
    must never be created in a host directory that an earlier bind made visible."""
    path = root
    for part in inside.strip("/").split("/"):
        path += "/" + part
        if not os.path.lexists(path):
            os.mkdir(path, 0o755)
        st = os.lstat(path)
        if st.st_dev != tmpfs or not os.path.isdir(path) or os.path.islink(path):
            raise OSError("sandbox: cannot place %s in the new root" % inside)
    return path


def build_root(root, size_mb, inodes, binds, symlinks, owner):
    """Assemble the new root at ``root`` (an empty directory) and switch to it with pivot_root.

    ``binds``: (path inside, real path outside) directories bound read-only; ``symlinks``: (path, target)
    such as merged-/usr's ``/lib -> usr/lib``; ``owner``: the uid that gets ``/sandbox``.
    """
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,nr_inodes=%d,mode=755" % (size_mb, inodes))
    tmpfs = os.stat(root).st_dev
    for inside, outside in binds:
        dst = _mount_point(root, tmpfs, inside)
        _mount(outside, dst, None, MS_BIND | MS_REC)
    for name in DEVICES:
        dst = "%s/dev/%s" % (root, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "w").close()
        _mount("/dev/" + name, dst, None, MS_BIND)
    for path, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), (WORK, 0o700), ("/proc", 0o555)):
        os.makedirs(root + path, exist_ok=True)
        os.chmod(root + path, mode)
    os.chown(root + WORK, owner, owner)
    for name, fd in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink("/proc/self/fd" + fd, "%s/dev/%s" % (root, name))
    for path, target in symlinks:
        os.symlink(target, root + path)
    # Read-only, nosuid, nodev: every bind and its submounts (device nodes keep their rw/dev flags).
    devices = {"%s/dev/%s" % (root, n) for n in DEVICES}
    for point, opts in _mountpoints():
        if point.startswith(root + "/") and point not in devices:
            keep = sum(v for k, v in _LOCKABLE.items() if k in opts)
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this PID namespace's
    os.chdir(root)
    pivot = getattr(_libc, "pivot_root", None)
    if pivot is not None:
        _check(pivot(b".", b"."), "pivot_root")
    else:
        _check(_libc.syscall(_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")  # the old root was stacked on "/"
    os.chdir(WORK)


def _capabilities():
    with open("/proc/self/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":") for line in f) if k in ("CapEff", "CapPrm", "CapBnd")}


def drop_privileges(mode, uid):
    """No way back to any privilege: setuid binaries and file capabilities are inert from here on."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if mode == "namespaces":  # started as real root: become an unprivileged per-run uid (clears all caps)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        left = _capabilities()
        left.pop("CapBnd")
    else:  # userns: uid 0 is the only id mapped; keep it, but with no capability in any set
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")  # nested user namespaces would hand out a fresh set of capabilities
        _check(_libc.prctl(PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0), "securebits")
        with open("/proc/sys/kernel/cap_last_cap") as f:
            for cap in range(int(f.read()) + 1):
                _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability %d" % cap)
        _check(_libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0), "clear ambient capabilities")
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
        left = _capabilities()
    if any(left.values()):
        raise OSError("capabilities left after dropping them: %r" % left)


def _relay_as_init(channel_fd):
    """pid 1 forks the program and relays its exit status; it does not hold the program's channel."""
    child = os.fork()
    if child:
        os.close(channel_fd)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)  # shell convention for "killed by signal N"


def set_limits(cpu_s, memory_mb, max_procs, max_file_mb):
    R = resource
    # CPU: SIGXCPU at the soft limit, SIGKILL one second later in case SIGXCPU is caught.
    for res, soft, hard in ((R.RLIMIT_CPU, cpu_s, cpu_s + 1), (R.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
                            (R.RLIMIT_NPROC, max_procs, max_procs),
                            (R.RLIMIT_FSIZE, max_file_mb << 20, max_file_mb << 20), (R.RLIMIT_CORE, 0, 0)):
        R.setrlimit(res, (soft, hard))


def install_guard(work):
    """In-process audit hook (PEP 578): defence in depth in front of the kernel boundaries, never one itself
    (native code, ``_posixsubprocess`` and ``dir_fd`` calls pass it by)."""
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


def main():
    spec = json.loads(sys.argv[1])
    channel_fd = spec["channel_fd"]
    read, write, exit_now, recv_fds = os.read, os.write, os._exit, socket.recv_fds  # before the program runs
    try:
        with open(spec["program"], encoding="utf-8") as f:
            source = f.read()
        jail = spec["jail"]
        if jail:
            build_root(**jail["root"])
            drop_privileges(spec["mode"], jail["uid"])
            _relay_as_init(channel_fd)
        # The channel to the evaluator is a unix socket, which /proc/self/fd cannot reopen. The nonce is not
        # among its bytes: a pipe holding it waits on it as a passed descriptor (SCM_RIGHTS), and reading the
        # bytes alone drops that descriptor. Made before the audit hook, which refuses sockets.
        channel = socket.socket(fileno=channel_fd)
        work = os.path.realpath(os.getcwd())
        with open("program.py", "w", encoding="utf-8") as f:  # for tracebacks; the program may read it
            f.write(source)
        set_limits(spec["cpu_s"], spec["memory_mb"], spec["max_procs"], spec["max_file_mb"])
        channel.sendall(b"R")  # the sandbox is set up: anything from here on is the program's doing
    except BaseException:
        traceback.print_exc()
        exit_now(125)
    try:
        code = compile(source, "program.py", "exec")
        if spec["audit_hook"]:
            install_guard(work)
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:
        if isinstance(e, SystemExit):
            sys.stderr.write("SystemExit(%r): exited before its tests finished\n" % (e.code,))
        else:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        exit_now(1)
    sys.stdout.flush()
    sys.stderr.flush()
    try:  # the nonce's first read in this process (queued before it started, so no need to wait)
        channel.setblocking(False)
        _, fds, _, _ = recv_fds(channel, 1, 1)
    except OSError:
        fds = []
    write(channel.fileno(), b"P" + (read(fds[0], 64) if fds else b""))
    exit_now(0)  # skip atexit handlers and thread joins: the verdict is decided


if __name__ == "__main__":
    main()

"""Run untrusted generated programs (model-written code) in an isolated subprocess, and score code
against tests with a proof that the tests ran to their end.

Two entry points:

- `run_python(source)` runs a program; "passed" means it exited with code 0. That is all a generic
  program can show, so it is NOT a reward signal for untrusted code: a program can always exit 0.
- `run_tests(solution, tests, entry_point)` scores a solution against trusted tests (HumanEval's
  `check(candidate)`). "passed" requires a proof of completion; this is what rewards use.

Proof of completion (run_tests). Two processes run in the sandbox: the harness (trusted code of this
module) and the solution process (the model's code, loaded as its own module). The harness reads the
tests and a secret nonce (drawn by the parent with os.urandom) from a memfd and closes it, makes itself
non-dumpable (so the solution, same uid, cannot read its memory, fds or environment through /proc, and
ptrace is blocked by seccomp), and only then starts the solution process. `check` runs in the harness;
each call of `candidate(...)` is sent to the solution process as marshal data and its result comes
back the same way, and must be plain built-in data of exact types (int, float, complex, str, bytes,
bool, None, and lists, tuples, dicts, sets of those). When `check` returns, the harness writes the
nonce and its verdict to a pipe only it holds; the parent requires the nonce, a verdict of success
and a clean exit of the harness. So exits, exit hooks, signal and exception hooks, trace hooks and
replaced builtins in the solution only affect the solution's own process (the harness then sees a
dead or silent solution: reward 0); always-equal objects cannot cross the marshal boundary; the
solution never holds the tests (they are not in its process, not on its filesystem, and the dataset
paths a caller names in `hidden_paths` are covered by empty mounts). What it cannot stop: a solution
that really computes the right outputs (that is the task), and a kernel or hardware escape.

Isolation (both entry points). A launcher process (this file as a stdlib-only script, spec on stdin)
isolates itself, then execs the program:

- namespaces: network (no interfaces up, nothing leaves, not even to 127.0.0.1), IPC (SysV objects
  and POSIX message queues die with the run), mount and pid; as root the program also drops to an
  unprivileged uid of its own (one per concurrent slot, claimed with a lock file in a root-owned
  directory), otherwise an unprivileged user namespace provides the privileges for the others;
- the filesystem: the host's tree recursively read-only; private size- and inode-limited tmpfs over
  /tmp (the working directory), /var/tmp, /dev/shm and /run (/run/lock included); only the system's
  top-level directories stay visible (/usr, /etc, /lib..., see _SYSTEM_ROOTS): every other one
  (/root, /home, /work, /opt, /srv, /mnt, ...: other checkouts, virtualenvs, wheel caches, datasets)
  and the caller's home get empty mounts, the interpreter's own directories are brought back, and
  `hidden_paths` are covered inside them too; a fresh /proc that shows only the run's own processes
  (mounted by the pid namespace's init);
- NO_NEW_PRIVS and, on x86_64, a seccomp filter that refuses ptrace, process_vm_*, keyctl/add_key/
  request_key, unshare/setns and namespace flags to clone (clone3 reports ENOSYS), mount and the new
  mount API, io_uring, bpf, perf_event_open, userfaultfd, kernel modules and AF_UNIX sockets (so no
  host daemon is reachable through a socket file; socketpair still works);
- limits for the whole run where cgroups are writable: a cgroup per run (v2: memory.max,
  memory.swap.max, pids.max, cpu.max; else v1 memory and pids, plus cpu), the run's processes killed
  through it at the end; per-process rlimits as a second line (CPU seconds, address space,
  processes, file size, which also caps captured output, open files, no core dumps);
- a scrubbed environment, start_new_session=True, SIGKILL to the whole process group at the wall
  deadline; the parent reads the status pipe against that deadline and parses it defensively.

Fail closed: with `SandboxLimits(require_isolation=True)` (the default) a run that cannot get network,
mount (read-only view and private scratch), pid (with its own /proc) and IPC namespaces plus a dropped
uid or a user namespace is refused with `SandboxUnavailable`, which says what is missing. Pass
`require_isolation=False` only where the code is trusted; such runs are logged as warnings.
`SandboxResult.isolation` lists what was applied. Anything a program can cause is a result with a
status and reason (reward 0); only a failure of the sandbox itself is status "error".
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hmac
import json
import logging
import os
import resource
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Sequence

# Linux clone flags (os.unshare exists only from Python 3.12).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_PRIVATE_WORK = "/tmp/sandbox"  # the working directory inside the mount namespace

# Unprivileged uids for sandboxed programs when run as root: one per concurrent slot. High enough to
# be unused by real accounts; override with IA_SANDBOX_UID_BASE.
_UID_BASE = int(os.environ.get("IA_SANDBOX_UID_BASE", "1990000"))
_UID_SLOTS = 512
_LOCK_DIR = "/run/ia_sandbox_uids"  # root-owned, independent of TMPDIR
_STATUS_CAP = 1 << 20  # bytes of status reports read from the launcher

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "error")
_log = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """The machine does not allow the isolation the limits require; nothing was run."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # RLIMIT_AS of each process (address space, not resident memory)
    total_memory_bytes: int | None = None  # the whole run's memory (cgroup); None: memory_bytes
    max_processes: int = 16  # the whole run's processes (cgroup pids.max and RLIMIT_NPROC)
    cpu_cores: float = 1.0  # CPU bandwidth of the whole run (cgroup cpu.max)
    file_bytes: int = 8 << 20  # RLIMIT_FSIZE: any one file, stdout and stderr included
    disk_bytes: int = 64 << 20  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run)
    disk_inodes: int = 4096  # inodes of each private tmpfs
    open_files: int = 64
    output_chars: int = 8192  # characters of stdout/stderr kept in the result
    network: bool = False  # True leaves the network namespace alone
    require_isolation: bool = True  # refuse to run without full isolation (see the module docstring)


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    reason: str  # human-readable cause ("exit code 1: AssertionError", "wall time limit 2.0 s", ...)
    returncode: int | None  # negative: killed by that signal
    stdout: str  # truncated to limits.output_chars
    stderr: str
    wall_seconds: float
    isolation: tuple[str, ...] = ()  # what was applied: "netns", "mountns", "pidns", "uid=...", ...

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------------ harness
# The two programs of run_tests. Both are run with `python -I -c`; neither holds anything secret in
# its source (the nonce and the tests arrive through a memfd the harness closes before the solution
# process starts).

_HARNESS = r'''
import ctypes, json, marshal, os, subprocess, sys

_PLAIN_ATOMS = (int, float, complex, str, bytes, bool, type(None))
_LIMIT = 64 << 20


class SolutionFailure(Exception):
    pass


def _plain(value, depth=0):
    kind = type(value)
    if kind in _PLAIN_ATOMS:
        return value
    if depth > 100:
        raise SolutionFailure("result nested too deeply")
    if kind in (list, tuple, set, frozenset):
        for item in value:
            _plain(item, depth + 1)
        return value
    if kind is dict:
        for k, v in value.items():
            _plain(k, depth + 1)
            _plain(v, depth + 1)
        return value
    raise SolutionFailure(f"result of type {kind.__name__} is not plain data")


def main():
    payload_fd, proof_fd = int(sys.argv[1]), int(sys.argv[2])
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/{mem,fd,environ} closed
    with os.fdopen(payload_fd, "rb") as f:
        payload = json.loads(f.read())
    nonce = payload.pop("nonce")

    def verdict(ok, reason):
        line = nonce + " " + json.dumps({"ok": ok, "reason": reason[:400]}) + "\n"
        os.write(proof_fd, line.encode())
        os.close(proof_fd)

    call_r, call_w = os.pipe()
    ret_r, ret_w = os.pipe()
    solution = subprocess.Popen(
        [sys.executable, "-I", "-c", payload["runner"], payload["entry_point"], str(call_r), str(ret_w)],
        stdin=subprocess.DEVNULL, pass_fds=(call_r, ret_w), close_fds=True,
    )
    os.close(call_r)
    os.close(ret_w)
    calls, results = os.fdopen(call_w, "wb"), os.fdopen(ret_r, "rb")

    def ended():
        try:
            code = solution.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the solution process stopped answering"
        if code < 0:
            import signal
            return f"the solution process was killed by {signal.Signals(-code).name}"
        return f"the solution process exited with code {code}"

    def receive():
        header = results.read(8)
        if len(header) < 8:
            raise SolutionFailure(ended())
        size = int.from_bytes(header, "little")
        if size > _LIMIT:
            raise SolutionFailure("result too large")
        data = results.read(size)
        if len(data) < size:
            raise SolutionFailure(ended())
        try:
            message = marshal.loads(data)
        except Exception as e:
            raise SolutionFailure(f"unreadable result ({type(e).__name__})") from None
        if type(message) is not tuple or len(message) != 2 or type(message[0]) is not str:
            raise SolutionFailure("malformed result")
        return message[0], _plain(message[1])

    def candidate(*args, **kwargs):
        data = marshal.dumps((args, kwargs))
        try:
            calls.write(len(data).to_bytes(8, "little") + data)
            calls.flush()
        except OSError:
            raise SolutionFailure(ended()) from None
        kind, value = receive()
        if kind == "ok":
            return value
        raise SolutionFailure(str(value))

    try:
        kind, value = receive()
        if kind != "ready":
            raise SolutionFailure(str(value))
        namespace = {"__name__": "__tests__"}
        exec(compile(payload["tests"], "<tests>", "exec"), namespace)
        namespace[payload["entry_point"]] = candidate  # tests may call the function by its name
        namespace["check"](candidate)
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, SolutionFailure) else str(e)
        verdict(False, reason)
        solution.kill()
        os._exit(1)
    verdict(True, "all tests passed")
    solution.kill()
    os._exit(0)


main()
'''

_RUNNER = r'''
import importlib.util, marshal, os, sys, traceback

entry, calls, results = sys.argv[1], os.fdopen(int(sys.argv[2]), "rb"), os.fdopen(int(sys.argv[3]), "wb")


def send(kind, value):
    try:
        data = marshal.dumps((kind, value))
    except ValueError:
        data = marshal.dumps(("error", f"the result ({type(value).__name__}) is not plain data"))
    results.write(len(data).to_bytes(8, "little") + data)
    results.flush()


try:
    spec = importlib.util.spec_from_file_location("solution", "solution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, entry)
except BaseException as e:
    traceback.print_exc()
    send("error", f"the solution failed to load: {type(e).__name__}: {e}")
    sys.exit(1)
send("ready", None)
while True:
    header = calls.read(8)
    if len(header) < 8:
        break
    args, kwargs = marshal.loads(calls.read(int.from_bytes(header, "little")))
    try:
        value = function(*args, **kwargs)
    except BaseException as e:
        send("error", f"{type(e).__name__}: {e}")
        continue
    send("ok", value)
'''

# ----------------------------------------------------------------------------------------- launcher
# Everything below up to the parent side runs in the launcher process (python -I -S sandbox.py --launch).


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(libc, flags: int, ns: str) -> None:
    """unshare(2), checked: the namespace named `ns` in /proc/self/ns must really change (mounting
    into the caller's mount namespace by mistake would cover /tmp for every process on the machine)."""
    before = os.readlink(f"/proc/self/ns/{ns}")
    _check(libc.unshare(flags), f"unshare {ns}")
    try:
        after = os.readlink(f"/proc/self/ns/{ns}")
    except FileNotFoundError:  # pid_for_children of a new pid namespace before its first process
        return
    if after == before:
        raise OSError(0, f"unshare left the {ns} namespace unchanged")


def _mount(libc, source, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _read_only_everywhere(libc) -> None:
    """Make every mount of this (private) mount namespace read-only."""
    attr = _MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr): 442 on every architecture.
    if libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return
    if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(ctypes.get_errno(), "mount_setattr /: " + os.strerror(ctypes.get_errno()))
    # Kernels before 5.12: remount each mount read-only, keeping its flags (locked in a user namespace).
    names = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
             "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME}
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for opt in fields[5].split(","):
            flags |= names.get(opt, 0)
        try:
            _mount(libc, None, target, None, flags)
        except OSError:
            if target == "/":
                raise


def _setup_filesystem(libc, spec: dict) -> None:
    """In a new mount namespace: the host read-only, private scratch, hidden private paths, and the
    program's files in a fresh working directory."""
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _read_only_everywhere(libc)
    limits = spec["limits"]
    scratch = f"size={limits['disk_bytes']},nr_inodes={limits['disk_inodes']}"
    for path, mode in (("/tmp", "1777"), ("/var/tmp", "1777"), ("/dev/shm", "1777"), ("/run", "755")):
        if os.path.isdir(path) and not os.path.islink(path):
            _mount(libc, "tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{scratch},mode={mode}")
    if os.path.isdir("/run"):
        os.mkdir("/run/lock", 0o1777)
        os.chmod("/run/lock", 0o1777)
    # Paths that must stay visible inside a hidden one (the interpreter, when it lives in a home):
    # park a bind mount of each in the new /tmp, hide, then bring it back.
    parked = []
    for i, keep in enumerate(spec["keep"]):
        if any(keep == h or keep.startswith(h.rstrip("/") + "/") for h in spec["hide"]) and os.path.isdir(keep):
            stage = f"/tmp/.keep{i}"
            os.mkdir(stage, 0o700)
            _mount(libc, keep, stage, None, _MS_BIND | _MS_REC)
            parked.append((keep, stage))
    def inside_kept(path):
        return any(path.startswith(keep.rstrip("/") + "/") for keep, _ in parked)

    hidden = []

    def hide(path):
        if os.path.islink(path) or not os.path.exists(path):
            return
        if os.path.isdir(path):
            _mount(libc, "tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=64k,nr_inodes=256,mode=755")
            hidden.append(path)
        else:
            _mount(libc, "/dev/null", path, None, _MS_BIND)

    # Paths inside a kept one (the dataset in the interpreter's own site-packages) are hidden after
    # the kept trees come back, else the bind mount would bring them back with it.
    for path in spec["hide"]:
        if not inside_kept(path):
            hide(path)
    for keep, stage in parked:
        os.makedirs(keep, exist_ok=True)
        _mount(libc, stage, keep, None, _MS_BIND | _MS_REC)
        _check(libc.umount2(stage.encode(), _MNT_DETACH), f"umount {stage}")
        os.rmdir(stage)
    for path in spec["hide"]:
        if inside_kept(path):
            hide(path)
    for path in hidden:
        _mount(libc, None, path, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    os.mkdir(_PRIVATE_WORK, 0o700)
    os.chdir(_PRIVATE_WORK)
    for name, text in spec["files"].items():
        with open(name, "w") as f:
            f.write(text)
        if spec["uid"] is not None:
            os.chown(name, spec["uid"], spec["uid"])
    if spec["uid"] is not None:
        os.chown(_PRIVATE_WORK, spec["uid"], spec["uid"])
    spec["env"]["HOME"] = _PRIVATE_WORK


def _isolate(spec: dict, applied: list, missing: list) -> None:
    """Enter new namespaces (as many as allowed) and set up the private filesystem view."""
    libc = _libc()
    if spec["uid"] is None:
        # An unprivileged user namespace gives the capabilities needed for the others.
        uid, gid = os.getuid(), os.getgid()
        try:
            if spec["deny"] and "user" in spec["deny"]:
                raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
            _unshare(libc, _CLONE_NEWUSER, "user")
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
            applied.append("userns")
        except OSError as e:
            missing.append(f"user namespace ({e.strerror or e})")
    wanted = [("ipc", _CLONE_NEWIPC, "ipcns", "IPC namespace")]
    if not spec["limits"]["network"]:
        wanted.insert(0, ("net", _CLONE_NEWNET, "netns", "network namespace"))
    for ns, flag, tag, name in wanted:
        try:
            if spec["deny"] and ns in spec["deny"]:
                raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
            _unshare(libc, flag, ns)
            applied.append(tag)
        except OSError as e:
            missing.append(f"{name} ({e.strerror or e})")
    try:
        if spec["deny"] and "mnt" in spec["deny"]:
            raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
        _unshare(libc, _CLONE_NEWNS, "mnt")  # raises unless the mount namespace is new
        _setup_filesystem(libc, spec)
        applied.extend(["mountns", "readonly-host", "private-scratch"])
    except OSError as e:
        missing.append(f"mount namespace with a read-only view and private scratch ({e.strerror or e})")
        os.chdir("/")
        spec["fallback_dir"] = True
    try:
        if spec["deny"] and "pid" in spec["deny"]:
            raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
        _unshare(libc, _CLONE_NEWPID, "pid_for_children")
        applied.append("pidns")
    except OSError as e:
        missing.append(f"pid namespace ({e.strerror or e})")


# seccomp: syscalls refused with EPERM (x86_64 numbers).
_SECCOMP_DENY_X86_64 = (
    101, 310, 311,  # ptrace, process_vm_readv, process_vm_writev
    248, 249, 250,  # add_key, request_key, keyctl
    272, 308,  # unshare, setns
    165, 166, 155, 161,  # mount, umount2, pivot_root, chroot
    428, 429, 430, 431, 432, 433, 442,  # open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr
    425, 426, 427,  # io_uring_setup, io_uring_enter, io_uring_register
    321, 298, 323,  # bpf, perf_event_open, userfaultfd
    175, 313, 176, 246, 320,  # init_module, finit_module, delete_module, kexec_load, kexec_file_load
    167, 168, 169, 163,  # swapon, swapoff, reboot, acct
    303, 304,  # name_to_handle_at, open_by_handle_at
)
_NS_FLAGS = _CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWTIME


def _seccomp_program() -> bytes | None:
    """The classic BPF filter (x86_64 only; None elsewhere)."""
    if os.uname().machine != "x86_64":
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    code = [
        (ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill),  # arch must be AUDIT_ARCH_X86_64
        (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm),  # no x32 syscalls
    ]
    for nr in _SECCOMP_DENY_X86_64:
        code += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    code += [(jeq, 0, 1, 435), (ret, 0, 0, enosys)]  # clone3: its flags are out of the filter's reach
    code += [(jeq, 0, 4, 56), (ld, 0, 0, 16), (jset, 0, 1, _NS_FLAGS), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    code += [(jeq, 0, 4, 41), (ld, 0, 0, 16), (jeq, 0, 1, 1), (ret, 0, 0, eperm), (ret, 0, 0, allow)]  # AF_UNIX
    code += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *ins) for ins in code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp() -> bool:
    """NO_NEW_PRIVS, then the filter on this process and its future children. False where no filter
    exists for this architecture (NO_NEW_PRIVS is still set)."""
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "no_new_privs")
    program = _seccomp_program()
    if program is None:
        return False
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)), "seccomp")
    return True


def _enter_program(spec: dict, keep_fds: tuple) -> None:
    """In the forked child: resource limits, drop privileges, seccomp, exec. Never returns."""
    limits = spec["limits"]
    # SIGXCPU at the soft CPU limit (its default action ends the program; an ignored disposition
    # would be inherited through exec, so reset it); SIGKILL a second later if the program ignores it.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
    for name, value in (
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
    try:
        _write_file("/proc/self/oom_score_adj", "500")
    except OSError:
        pass
    uid = spec["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if not install_seccomp() and spec["seccomp_required"]:
        raise OSError(errno.ENOSYS, "no seccomp filter for this architecture")
    # Die with our parent (the launcher, or the pid namespace's init, both killed at the wall
    # deadline); set after setuid, which clears it.
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec["parent_seen"]:  # the parent died before prctl took effect
        os._exit(137)
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def _clear_keyrings(uid: int) -> None:
    """As `uid` (in a forked child of root): clear its user and user-session keyrings."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            libc = _libc()
            for keyring in (-4, -5):  # KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING
                libc.syscall(250, 7, keyring)  # keyctl(KEYCTL_CLEAR, keyring)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _run_program(spec: dict, status_fd: int) -> int:
    """Fork the program, wait for it, and report its exit status, CPU time and proof on `status_fd`."""
    keep: tuple = ()
    proof_r = None
    if spec.get("harness"):
        payload = json.dumps(spec["harness"]).encode()
        memfd = os.memfd_create("tests", 0)  # close-on-exec unless kept below
        os.write(memfd, payload)
        os.lseek(memfd, 0, os.SEEK_SET)
        proof_r, proof_w = os.pipe()
        spec["argv"] = spec["argv"] + [str(memfd), str(proof_w)]
        keep = (memfd, proof_w)
    pid = os.fork()
    if pid == 0:
        try:
            spec["parent_seen"] = os.getppid()
            _enter_program(spec, keep)
        except BaseException as e:  # noqa: BLE001 - report anything, then die
            error = {"error": f"exec of {spec['argv'][0]} failed: {e!r}"}
            os.write(status_fd, (json.dumps(error) + "\n").encode())
        os._exit(127)
    for fd in keep:
        os.close(fd)
    while True:
        # Also reaps orphans re-parented to us (we are the pid namespace's init).
        done, wait_status, usage = os.wait4(-1, 0)
        if done == pid:
            break
    report = {"returncode": os.waitstatus_to_exitcode(wait_status), "cpu_seconds": usage.ru_utime + usage.ru_stime}
    if proof_r is not None:
        os.set_blocking(proof_r, False)
        try:
            report["proof"] = os.read(proof_r, 4096).decode("utf-8", "replace")
        except BlockingIOError:
            report["proof"] = ""
    os.write(status_fd, (json.dumps(report) + "\n").encode())
    if spec["uid"] is not None:
        try:  # best effort (the seccomp filter already refuses keyrings): the program's leftovers may
            _clear_keyrings(spec["uid"])  # hold every process slot until init exits
        except OSError:
            pass
    return 0


def _required_missing(spec: dict, applied: list, missing: list) -> str | None:
    if spec["limits"]["require_isolation"] and missing:
        return (
            "the sandbox cannot isolate programs on this machine; missing: " + "; ".join(missing)
            + ". Namespaces are often unavailable in containers (allow them, e.g. docker run "
            "--security-opt seccomp=unconfined --cap-add SYS_ADMIN, or run as root) and for "
            "unprivileged users where user namespaces are disabled (sysctl kernel."
            "unprivileged_userns_clone=1, or on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0). "
            "Only for trusted code: SandboxLimits(require_isolation=False)."
        )
    return None


def _launch() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program's stdin: nothing
    os.close(devnull)
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not inherit it
    libc = _libc()
    if os.geteuid() == 0:  # the cgroup's OOM killer must take the program, not the launcher or init
        try:
            _write_file("/proc/self/oom_score_adj", "-1000")
        except OSError:
            pass
    applied, missing = [], []

    def report(obj):
        os.write(status_fd, (json.dumps(obj) + "\n").encode())

    try:
        for procs in spec["cgroup_procs"]:  # join the run's cgroup before anything else
            _write_file(procs, str(os.getpid()))
        if spec["cgroup_procs"]:
            applied.append(spec["cgroup_tag"])
        _isolate(spec, applied, missing)
        # Not dumpable (after the user namespace's maps are written): a program running as the same
        # uid (no root) cannot open /proc/<pid>/fd or mem of the launcher or of the pid namespace's
        # init (which inherits this).
        libc.prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        if spec["uid"] is not None:
            applied.append(f"uid={spec['uid']}")
        applied.append("rlimits")
        if os.uname().machine == "x86_64":
            applied.append("seccomp")
        applied.append("no_new_privs")
        refusal = _required_missing(spec, applied, missing)
        report({"applied": applied, "missing": missing} if refusal is None else {"refused": refusal, "applied": applied})
        if refusal is not None:
            return 2
        if spec.get("fallback_dir"):
            # No private scratch: the program runs in the parent's work directory.
            os.chdir(spec["work"])
            for name, text in spec["files"].items():
                with open(name, "w") as f:
                    f.write(text)
                if spec["uid"] is not None:
                    os.chown(name, spec["uid"], spec["uid"])
        if "pidns" not in applied:
            return _run_program(spec, status_fd)
        # The first child is the new pid namespace's init. It mounts the namespace's own /proc, then
        # only waits: the program runs as its child, so signals keep their usual meaning for the
        # program (the kernel drops default-action signals sent to a namespace's init), and when init
        # exits after the program, the kernel kills whatever the program left behind.
        init = os.fork()
        if init == 0:
            code = 1
            try:
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the launcher
                if "mountns" in applied:
                    try:
                        _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                        report({"procfs": "fresh /proc"})
                    except OSError as e:
                        try:  # e.g. a container's masked /proc: hide it instead
                            _mount(libc, "tmpfs", "/proc", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY, "size=4k")
                            report({"procfs": f"empty /proc (no fresh proc: {e.strerror})"})
                        except OSError as e2:
                            if spec["limits"]["require_isolation"]:
                                report({"refused": f"the sandbox cannot hide the host's /proc ({e2.strerror}); "
                                                   "only for trusted code: SandboxLimits(require_isolation=False)"})
                                os._exit(2)
                code = _run_program(spec, status_fd)
            finally:
                os._exit(code)
        os.waitpid(init, 0)
        return 0
    except BaseException as e:  # noqa: BLE001
        report({"error": f"launcher failed: {e!r}", "applied": applied})
        return 1
    finally:
        os.close(status_fd)


def _kill_uid(uid: int) -> int:
    """As `uid`, SIGKILL every process of that uid (atomic with respect to fork in the kernel)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return 0


# -------------------------------------------------------------------------------------- parent side


class _UidSlot:
    """Claims an unprivileged uid for one run, system-wide (a lock file per uid, in a root-owned
    directory: another user cannot pre-create or hold the locks)."""

    _local_lock = threading.Lock()

    def __init__(self):
        self.uid = None
        self._fd = None

    def __enter__(self):
        try:
            os.mkdir(_LOCK_DIR, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(_LOCK_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise SandboxUnavailable(f"{_LOCK_DIR} must be a directory owned by root and writable only by root")
        with self._local_lock:
            for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
                fd = os.open(os.path.join(_LOCK_DIR, str(uid)), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                self.uid, self._fd = uid, fd
                return self
        raise SandboxUnavailable(f"all {_UID_SLOTS} sandbox uids are in use")

    def __exit__(self, *exc):
        os.close(self._fd)


class _NoSlot:
    uid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by `uid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
            pids.append(int(entry))
    return pids


def _reap_uid(uid: int) -> None:
    """Kill whatever still runs as the slot's uid (e.g. a child that left the process group)."""
    for _ in range(5):
        if not _processes_of(uid):
            return
        subprocess.run([sys.executable, "-I", "-S", __file__, "--kill-uid", str(uid)], timeout=10)
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------- cgroups


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of this process's mounts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3:
                out.append((fields[4].encode().decode("unicode_escape"), rest[0], rest[2]))
    return out


class _Cgroup:
    """A cgroup per run: v2 where a delegated subtree with the memory and pids controllers is
    writable (IA_SANDBOX_CGROUP names one; else this process's own cgroup), else v1 memory + pids."""

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, version: int, dirs: list[str]):
        self.version, self.dirs = version, dirs

    @property
    def tag(self) -> str:
        return f"cgroup{self.version}"

    @property
    def procs(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    @classmethod
    def _name(cls) -> str:
        with cls._counter_lock:
            cls._counter += 1
            return f"ia-sandbox-{os.getpid()}-{cls._counter}"

    @classmethod
    def create(cls, limits: SandboxLimits):
        try:
            own = {}
            with open("/proc/self/cgroup") as f:
                for line in f:
                    num, controllers, path = line.rstrip("\n").split(":", 2)
                    for c in controllers.split(",") if controllers else [""]:
                        own[c] = path
            mounts = _mountinfo()
        except OSError:
            return None
        memory = limits.total_memory_bytes or limits.memory_bytes
        return cls._create_v2(own, mounts, limits, memory) or cls._create_v1(own, mounts, limits, memory)

    @classmethod
    def _create_v2(cls, own, mounts, limits, memory):
        parent = os.environ.get("IA_SANDBOX_CGROUP")
        if not parent:
            roots = [m for m, fstype, _ in mounts if fstype == "cgroup2"]
            if not roots or "" not in own:
                return None
            parent = os.path.join(roots[0], own[""].lstrip("/"))
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
            if not {"memory", "pids"} <= set(enabled):
                with open(os.path.join(parent, "cgroup.controllers")) as f:
                    available = set(f.read().split())
                if not {"memory", "pids"} <= available:
                    return None
                wanted = [c for c in ("memory", "pids", "cpu") if c in available and c not in enabled]
                _write_file(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            path = os.path.join(parent, cls._name())
            os.mkdir(path)
        except OSError:
            return None
        group = cls(2, [path])
        try:
            _write_file(os.path.join(path, "memory.max"), str(memory))
            _write_file(os.path.join(path, "pids.max"), str(limits.max_processes + 3))  # + launcher, init, its helper
            for name, value in (("memory.swap.max", "0"), ("cpu.max", f"{int(limits.cpu_cores * 100000)} 100000")):
                if os.path.exists(os.path.join(path, name)):
                    _write_file(os.path.join(path, name), value)
        except OSError:
            group.remove()
            return None
        return group

    @classmethod
    def _create_v1(cls, own, mounts, limits, memory):
        def hierarchy(controller):
            for mount_point, fstype, options in mounts:
                if fstype == "cgroup" and controller in options.split(",") and controller in own:
                    return os.path.join(mount_point, own[controller].lstrip("/"))
            return None

        name, dirs = cls._name(), []
        group = cls(1, dirs)
        try:
            for controller in ("memory", "pids", "cpu"):
                parent = hierarchy(controller)
                if parent is None:
                    if controller == "cpu":
                        continue
                    raise OSError(errno.ENOENT, f"no v1 {controller} hierarchy")
                path = os.path.join(parent, name)
                os.mkdir(path)
                dirs.append(path)
                if controller == "memory":
                    _write_file(os.path.join(path, "memory.limit_in_bytes"), str(memory))
                    try:
                        _write_file(os.path.join(path, "memory.memsw.limit_in_bytes"), str(memory))
                    except OSError:
                        pass
                elif controller == "pids":
                    _write_file(os.path.join(path, "pids.max"), str(limits.max_processes + 3))
                else:
                    _write_file(os.path.join(path, "cpu.cfs_period_us"), "100000")
                    _write_file(os.path.join(path, "cpu.cfs_quota_us"), str(int(limits.cpu_cores * 100000)))
        except OSError:
            group.remove()
            return None
        return group

    def kill(self) -> None:
        """SIGKILL every process in the run's cgroup (v2: cgroup.kill where the kernel has it)."""
        if self.version == 2 and os.path.exists(os.path.join(self.dirs[0], "cgroup.kill")):
            try:
                _write_file(os.path.join(self.dirs[0], "cgroup.kill"), "1")
            except OSError:
                pass
        for _ in range(100):
            pids = set()
            for procs in self.procs:
                try:
                    with open(procs) as f:
                        pids.update(int(p) for p in f.read().split())
                except OSError:
                    pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)

    def oom_killed(self) -> bool:
        try:
            if self.version == 2:
                path = os.path.join(self.dirs[0], "memory.events")
            else:
                path = os.path.join(next(d for d in self.dirs if "memory" in d), "memory.oom_control")
            with open(path) as f:
                fields = dict(line.split() for line in f if len(line.split()) == 2)
            return int(fields.get("oom_kill", "0")) > 0
        except (OSError, StopIteration, ValueError):
            return False

    def remove(self) -> None:
        for path in reversed(self.dirs):
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


# --------------------------------------------------------------------------------------- running


def _read_capped(path: str, chars: int) -> tuple[str, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read(chars * 4)
    text = data.decode("utf-8", errors="replace")
    if len(text) > chars or size > len(data):
        text = text[:chars] + f"\n...[truncated, {size} bytes in all]"
    return text, size


def _scrubbed_env(work: str) -> dict:
    # Nothing of the parent's environment (tokens, keys, proxies) reaches the program.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


_interpreter_cache: dict = {}


def sandbox_python() -> str:
    """An interpreter the sandbox uid can execute: IA_SANDBOX_PYTHON when set, else sys.executable
    when every directory on its path is open to other users, else the system python3 (as root,
    sys.executable may live under a private home, such as pyenv under /root)."""
    if "python" in _interpreter_cache:
        return _interpreter_cache["python"]
    if os.environ.get("IA_SANDBOX_PYTHON"):
        return os.environ["IA_SANDBOX_PYTHON"]
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    choice = sys.executable
    if os.geteuid() == 0:
        for path in candidates:
            if os.path.exists(path) and _world_executable(path):
                choice = path
                break
    _interpreter_cache["python"] = choice
    return choice


def _world_executable(path: str) -> bool:
    """True when an unrelated unprivileged user can execute `path` (every directory searchable)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


# Top-level directories a program may see (read-only): the system's. Everything else at the top
# level is hidden: a machine's other checkouts, virtualenvs, wheel caches and datasets live there
# (/work, /opt, /srv, /mnt, ...), and hiding one known path at a time is a game a policy wins.
_SYSTEM_ROOTS = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys",
                           "tmp", "var", "run", "boot"})


def _private_paths() -> list[str]:
    """Everything at the top level but the system's directories, and the caller's home: hidden from
    programs (the interpreter's own directories are brought back, see _setup_filesystem)."""
    try:
        tops = [os.path.join("/", name) for name in os.listdir("/")
                if name not in _SYSTEM_ROOTS and os.path.isdir(os.path.join("/", name))
                and not os.path.islink(os.path.join("/", name))]
    except OSError:
        tops = []
    paths = ["/root", "/home", *tops]
    try:
        import pwd

        paths.append(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    if os.environ.get("HOME"):
        paths.append(os.environ["HOME"])
    return [os.path.realpath(p) for p in paths if p and os.path.realpath(p) != "/"]


def _interpreter_paths(python: str) -> list[str]:
    """Directories the interpreter needs (kept visible inside hidden homes)."""
    paths = set()
    for exe in (python, os.path.realpath(python)):
        paths.add(os.path.dirname(os.path.dirname(os.path.abspath(exe))))
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths.update({sys.prefix, sys.base_prefix})
    return sorted(os.path.realpath(p) for p in paths)


_warned: set = set()


def run_python(source: str, limits: SandboxLimits | None = None, *, python: str | None = None,
               hidden_paths: Sequence[str] = ()) -> SandboxResult:
    """Runs `source` as a Python program in the sandbox and classifies the outcome ("passed": exit
    code 0, which any program can fake: use `run_tests` for rewards)."""
    python = python or sandbox_python()
    return _execute({"program.py": source}, [python, "-I", "program.py"], limits, None, hidden_paths, python)


def run_tests(solution: str, tests: str, entry_point: str, limits: SandboxLimits | None = None, *,
              python: str | None = None, hidden_paths: Sequence[str] = ()) -> SandboxResult:
    """Scores `solution` (source defining `entry_point`) against trusted `tests` (source defining
    `check(candidate)`): "passed" only with the harness's proof that `check` returned (see the module
    docstring). `hidden_paths` (e.g. the dataset's directory) are not visible to the program."""
    python = python or sandbox_python()
    harness = {"tests": tests, "entry_point": entry_point, "runner": _RUNNER}
    return _execute({"solution.py": solution}, [python, "-I", "-c", _HARNESS], limits, harness, hidden_paths, python)


def _execute(files, argv, limits, harness, hidden_paths, python) -> SandboxResult:
    limits = limits or SandboxLimits()
    root = os.geteuid() == 0
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="ia_sandbox_")
    try:
        with _UidSlot() if root else _NoSlot() as slot:
            return _run_in(base, files, argv, limits, harness, hidden_paths, python, slot.uid, start)
    finally:
        _remove_tree(base)


def _run_in(base, files, argv, limits, harness, hidden_paths, python, uid, start) -> SandboxResult:
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    # Without root, RLIMIT_NPROC counts all of the user's processes (the sandbox shares their uid):
    # allow those running now plus the program's own. Concurrent runs share that headroom; the
    # cgroup (where there is one) bounds the run itself.
    nproc = limits.max_processes if uid is not None else len(_processes_of(os.getuid())) + limits.max_processes
    nonce = os.urandom(16).hex() if harness is not None else None
    group = _Cgroup.create(limits)
    spec = {
        "work": work,
        "uid": uid,
        "nproc": nproc,
        "limits": asdict(limits),
        "argv": list(argv),
        "env": _scrubbed_env(work),
        "files": files,
        "hide": sorted(set(_private_paths()) | {os.path.realpath(p) for p in hidden_paths}),
        "keep": _interpreter_paths(python),
        "cgroup_procs": group.procs if group else [],
        "cgroup_tag": group.tag if group else "",
        "deny": os.environ.get("IA_SANDBOX_DENY", ""),  # testing: namespaces to treat as unavailable
        "seccomp_required": False,
        "harness": dict(harness, nonce=nonce) if harness is not None else None,
    }
    out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
    status_r, status_w = os.pipe()
    spec["status_fd"] = status_w
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, "--launch"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd="/",
                env=_scrubbed_env(work),
                pass_fds=(status_w,),
                start_new_session=True,
            )
            launched = time.monotonic()
            os.close(status_w)
            try:  # the spec (with the tests and nonce) goes through a pipe, never a command line
                proc.stdin.write(json.dumps(spec).encode())
                proc.stdin.close()
            except OSError:
                pass
            raw, timed_out = _read_until(status_r, launched + limits.wall_seconds)
            _kill_group(proc.pid)
            if group is not None:
                group.kill()
            proc.wait()
            if uid is not None:
                _reap_uid(uid)
        wall = time.monotonic() - start
        oom = group.oom_killed() if group is not None else False
    finally:
        os.close(status_r)
        if group is not None:
            group.remove()
    report = _parse_reports(raw)
    if "refused" in report:
        raise SandboxUnavailable(str(report["refused"]))
    stdout, out_size = _read_capped(out_path, limits.output_chars)
    stderr, err_size = _read_capped(err_path, limits.output_chars)
    applied = report.get("applied") if isinstance(report.get("applied"), list) else []
    missing = report.get("missing") if isinstance(report.get("missing"), list) else []
    isolation = tuple(str(a) for a in applied)
    if isinstance(report.get("procfs"), str):
        isolation += (str(report["procfs"]),)
    isolation += tuple(f"missing: {m}" for m in missing)
    if group is None and applied:
        isolation += ("no cgroup: per-process limits only",)
    if missing:
        key = tuple(missing)
        if key not in _warned:  # once per kind of shortfall (every result lists it in `isolation`)
            _warned.add(key)
            _log.warning("ia_train.sandbox: running UNTRUSTED code without full isolation (require_isolation=False); missing: %s",
                         "; ".join(str(m) for m in missing))
    code = report.get("returncode")
    code = code if type(code) is int else None
    status, reason = _classify(report, code, timed_out, stderr, max(out_size, err_size), limits, oom)
    if harness is not None and status == "passed":
        status, reason = _check_proof(report.get("proof"), nonce)
    elif harness is not None and status == "failed":
        verdict = _verdict(report.get("proof"), nonce)
        if verdict is not None and not verdict[0]:
            reason = verdict[1]
            if "MemoryError" in reason:
                status, reason = "memory", f"memory limit exceeded ({reason[:200]})"
            elif "SIGXCPU" in reason:
                status, reason = "timeout", f"CPU time limit {limits.cpu_seconds} s exceeded ({reason[:200]})"
            elif "SIGXFSZ" in reason:
                status, reason = "output_limit", f"output or file size limit {limits.file_bytes} bytes exceeded"
    return SandboxResult(status, reason, code, stdout, stderr, wall, isolation)


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to the status pipe until EOF (False) or the deadline (True), capped."""
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks), False
        if size < _STATUS_CAP:
            chunks.append(data[: _STATUS_CAP - size])
            size += len(data)


def _parse_reports(raw: bytes) -> dict:
    """The launcher's JSON lines, merged; the first value of each key wins; anything else is ignored."""
    merged: dict = {}
    for line in raw.split(b"\n"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k, v in obj.items():
                merged.setdefault(k, v)
    return merged


def _verdict(proof, nonce: str):
    """(ok, reason) from the harness's proof, or None when it does not carry the nonce."""
    if not isinstance(proof, str):
        return None
    for line in proof.splitlines():
        head, _, rest = line.partition(" ")
        if len(head) == len(nonce) and hmac.compare_digest(head, nonce):
            try:
                verdict = json.loads(rest)
                return verdict["ok"] is True, str(verdict["reason"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _check_proof(proof, nonce: str) -> tuple[str, str]:
    verdict = _verdict(proof, nonce)
    if verdict is None:
        return "failed", "exited cleanly without the harness's proof that the tests ran to their end"
    if not verdict[0]:
        return "failed", verdict[1]
    return "passed", "all tests passed (proof of completion)"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(report: dict, code, timed_out: bool, stderr: str, out_size: int, limits: SandboxLimits, oom: bool):
    if timed_out:
        return "timeout", f"wall time limit {limits.wall_seconds:g} s exceeded"
    if "error" in report:  # the sandbox itself failed (e.g. the interpreter could not be executed)
        return "error", str(report["error"])[:500]
    if code is None and oom:  # the OOM killer took the launcher or init: the program's doing
        return "memory", f"memory limit {limits.total_memory_bytes or limits.memory_bytes} bytes of the run exceeded"
    if code is None:
        return "error", "the launcher died without reporting the program's exit"
    cpu = report.get("cpu_seconds", 0.0)
    cpu = cpu if type(cpu) in (int, float) else 0.0
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= 0.9 * limits.cpu_seconds):
        return "timeout", f"CPU time limit {limits.cpu_seconds} s exceeded (signal {-code})"
    if out_size >= limits.file_bytes or code == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit", f"output or file size limit {limits.file_bytes} bytes exceeded"
    if oom:
        return "memory", f"memory limit {limits.total_memory_bytes or limits.memory_bytes} bytes of the run exceeded"
    if code == 0:
        return "passed", "exit code 0"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory", f"memory limit {limits.memory_bytes} bytes exceeded"
    if code < 0:
        try:
            return "failed", f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return "failed", f"killed by signal {-code}"
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return "failed", f"exit code {code}: {last[:200]}"


def _remove_tree(path: str) -> None:
    """Remove `path`, making directories writable first (the program's files may be read-only);
    symlinks are never followed."""

    def unlock(dir_fd: int) -> None:
        for entry in os.scandir(dir_fd):
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.chmod(entry.name, 0o700, dir_fd=dir_fd)  # a directory, not a link (checked above)
                fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                unlock(fd)
            finally:
                os.close(fd)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        unlock(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class SandboxPool:
    """Runs many programs in parallel on a bounded pool of threads, one subprocess each."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None, python: str | None = None,
                 hidden_paths: Sequence[str] = ()):
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.limits = limits or SandboxLimits()
        self.python = python
        self.hidden_paths = tuple(hidden_paths)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ia-sandbox")

    def map(self, sources: Sequence[str], limits: SandboxLimits | None = None) -> list[SandboxResult]:
        limits = limits or self.limits
        run = lambda s: run_python(s, limits, python=self.python, hidden_paths=self.hidden_paths)  # noqa: E731
        return list(self._executor.map(run, sources))

    def map_tests(self, cases: Sequence[tuple[str, str, str]], limits: SandboxLimits | None = None) -> list[SandboxResult]:
        """`run_tests` on each (solution, tests, entry_point)."""
        limits = limits or self.limits
        run = lambda c: run_tests(*c, limits, python=self.python, hidden_paths=self.hidden_paths)  # noqa: E731
        return list(self._executor.map(run, cases))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_many(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None):
    with SandboxPool(workers, limits) as pool:
        return pool.map(sources)


if __name__ == "__main__":
    if sys.argv[1] == "--kill-uid":
        sys.exit(_kill_uid(int(sys.argv[2])))
    sys.exit(_launch())

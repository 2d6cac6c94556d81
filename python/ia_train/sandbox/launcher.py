"""The sandbox's launcher: the one file of ia_train.sandbox that runs as a script (`python -I -S
launcher.py --launch`, the spec on stdin), so it imports nothing but the standard library.

It isolates itself (namespaces, the filesystem view, no new privileges), forks the pid namespace's
init, which forks the program: resource limits, its own session, the unprivileged uid, the seccomp
filter, exec. It reports on the status pipe, one JSON object a line, with the keys of `Report`. The
parent builds the spec with `make_spec` (the keys of `SPEC_KEYS`, owned here) and imports the report
keys from here; `install_seccomp` is also the filter tests put on a caller to forbid namespaces.

`python -I -S launcher.py --kill-uid UID` (as root) kills every process of UID.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import struct
import sys

# --------------------------------------------------------------------------------- the interface

SPEC_KEYS = frozenset({
    "work",  # the caller's work directory (used only where there is no private scratch)
    "uid",  # the slot uid the program drops to (root), or None (a user namespace)
    "nproc",  # RLIMIT_NPROC of the program
    "limits",  # SandboxLimits as a dict
    "argv",  # the program's command line
    "env",  # its environment
    "files",  # {name: text} written to its working directory
    "hide",  # paths covered by empty mounts
    "keep",  # paths inside hidden ones that stay visible (the interpreter's)
    "cgroup_procs",  # cgroup.procs files the launcher joins first
    "cgroup_tag",  # "cgroup1" / "cgroup2" for the isolation list
    "deny",  # testing: comma-separated namespaces / features to treat as unavailable
    "seccomp_required",  # refuse to run where no filter exists for this architecture
    "harness",  # run_tests: {"tests", "entry_point", "runner", "nonce"}; None for run_python
    "status_fd",  # the status pipe's write end (inherited)
})


def make_spec(**fields) -> dict:
    """The launcher's spec: exactly the keys of SPEC_KEYS."""
    check_spec(fields)
    return dict(fields)


def check_spec(spec: dict) -> None:
    keys = set(spec)
    if keys != SPEC_KEYS:
        raise ValueError(f"sandbox spec: missing {sorted(SPEC_KEYS - keys)}, unknown {sorted(keys - SPEC_KEYS)}")


class Report:
    """The keys of the launcher's status lines (the parent keeps the first value of each)."""

    APPLIED = "applied"  # isolation layers in place (list of str)
    MISSING = "missing"  # layers the machine refused (list of str)
    REFUSED = "refused"  # the run was refused: isolation is required and missing (str)
    ERROR = "error"  # the sandbox failed before the program started (str)
    PROCFS = "procfs"  # what /proc the program sees (str)
    STARTED = "started"  # the program was forked: from now on nothing is the sandbox's failure (True)
    LOST = "lost"  # init or the launcher failed after the program started (str)
    REJECTED = "rejected"  # the program could not be set up: its files do not fit (str); nothing ran
    RETURNCODE = "returncode"  # the program's exit status (int; negative: its signal)
    CPU_SECONDS = "cpu_seconds"  # CPU time of the program and its reaped children (float)
    PROOF = "proof"  # run_tests: what the harness wrote to the proof pipe (str)


# ---------------------------------------------------------------------------------- constants

# Linux clone flags (os.unshare exists only from Python 3.12).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
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
PRIVATE_WORK = "/tmp/sandbox"  # the working directory inside the mount namespace
# Device nodes the program's /dev holds (bound from the host's); nothing else of the host's /dev.
_DEVICES = ("null", "zero", "full", "random", "urandom")
# Where procfs cannot show only the processes (subset=pid, Linux 5.8+): the machine-wide figures
# covered instead (another run can move them: memory, load, locks, counters).
_PROC_HOST_WIDE = ("meminfo", "stat", "loadavg", "uptime", "vmstat", "zoneinfo", "buddyinfo", "pagetypeinfo",
                   "diskstats", "interrupts", "softirqs", "schedstat", "locks", "key-users", "keys", "cgroups",
                   "swaps", "slabinfo", "sched_debug", "timer_list", "kmsg", "kallsyms", "partitions",
                   "vmallocinfo", "mounts", "misc", "devices", "modules", "sysvipc")
_PROC_HOST_WIDE_DIRS = ("sys", "pressure", "irq", "bus", "driver", "fs", "tty", "acpi", "scsi", "sysrq-trigger")


# ---------------------------------------------------------------------------------- helpers


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _default_signals() -> None:
    """Every signal the interpreter handles in Python (SIGINT's KeyboardInterrupt) or ignores (SIGPIPE,
    SIGXFSZ) back to the kernel's default. Right after start and after each fork: a program that
    signals the pid namespace's init then meets the kernel's rule (init ignores default-action
    signals sent from inside its namespace) instead of a Python handler that unwinds it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)


def _denied(spec: dict, name: str) -> bool:
    return bool(spec["deny"]) and name in spec["deny"].split(",")


# ---------------------------------------------------------------------------------- namespaces


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
    enc = lambda s: s.encode() if isinstance(s, str) else s
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


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


def _private_dev(libc, scratch: str) -> None:
    """A /dev of its own: null, zero, full, random and urandom (bound from the host's), the usual
    links into /proc/self/fd, and a private /dev/shm. Nothing else of the host's /dev (ptys, the
    kernel log, vsock, fuse, ...) is there to share."""
    stage = "/tmp/.dev"  # the private /tmp is mounted already
    os.mkdir(stage, 0o700)
    _mount(libc, "/dev", stage, None, _MS_BIND | _MS_REC)
    _mount(libc, "tmpfs", "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,nr_inodes=64,mode=755")
    for name in _DEVICES:
        if os.path.exists(os.path.join(stage, name)):
            open(os.path.join("/dev", name), "w").close()
            _mount(libc, os.path.join(stage, name), os.path.join("/dev", name), None, _MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join("/dev", name))
    os.mkdir("/dev/shm", 0o1777)
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"{scratch},mode=1777")
    _check(libc.umount2(stage.encode(), _MNT_DETACH), f"umount {stage}")
    os.rmdir(stage)
    _mount(libc, None, "/dev", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NOEXEC)


def _setup_filesystem(libc, spec: dict) -> None:
    """In a new mount namespace: the host read-only, private scratch and /dev, hidden private paths,
    and the program's files in a fresh working directory."""
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _read_only_everywhere(libc)
    limits = spec["limits"]
    scratch = f"size={limits['disk_bytes']},nr_inodes={limits['disk_inodes']}"
    for path, mode in (("/tmp", "1777"), ("/var/tmp", "1777"), ("/run", "755")):
        if os.path.isdir(path) and not os.path.islink(path):
            _mount(libc, "tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{scratch},mode={mode}")
    if os.path.isdir("/run"):
        os.mkdir("/run/lock", 0o1777)
        os.chmod("/run/lock", 0o1777)
    _private_dev(libc, scratch)
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
    os.mkdir(PRIVATE_WORK, 0o700)
    os.chdir(PRIVATE_WORK)
    if spec["uid"] is not None:
        os.chown(PRIVATE_WORK, spec["uid"], spec["uid"])
    spec["env"]["HOME"] = PRIVATE_WORK


def _write_files(spec: dict) -> None:
    """The program's files in the working directory (after the isolation: a program too large for
    its scratch space is the program's failure, not a missing namespace). Text that is not valid
    UTF-8 (a lone surrogate) is written as it is, for the program to fail on, not the launcher."""
    for name, text in spec["files"].items():
        with open(name, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        if spec["uid"] is not None:
            os.chown(name, spec["uid"], spec["uid"])


def _isolate(spec: dict, applied: list, missing: list) -> None:
    """Enter new namespaces (as many as allowed) and set up the private filesystem view."""
    libc = _libc()
    if spec["uid"] is None:
        # An unprivileged user namespace gives the capabilities needed for the others.
        uid, gid = os.getuid(), os.getgid()
        try:
            if _denied(spec, "user"):
                raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
            _unshare(libc, CLONE_NEWUSER, "user")
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
            applied.append("userns")
        except OSError as e:
            missing.append(f"user namespace ({e.strerror or e})")
    # The cgroup namespace after the run's cgroup was joined: its root is the run's own cgroup, so
    # /proc/self/cgroup names no host path (nor the sandbox's run counter).
    wanted = [("ipc", CLONE_NEWIPC, "ipcns", "IPC namespace"), ("cgroup", CLONE_NEWCGROUP, "cgroupns", "cgroup namespace")]
    if not spec["limits"]["network"]:
        wanted.insert(0, ("net", CLONE_NEWNET, "netns", "network namespace"))
    for ns, flag, tag, name in wanted:
        try:
            if _denied(spec, ns):
                raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
            _unshare(libc, flag, ns)
            applied.append(tag)
        except OSError as e:
            missing.append(f"{name} ({e.strerror or e})")
    try:
        if _denied(spec, "mnt"):
            raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
        _unshare(libc, CLONE_NEWNS, "mnt")  # raises unless the mount namespace is new
        _setup_filesystem(libc, spec)
        applied.extend(["mountns", "readonly-host", "private-scratch", "private-dev"])
    except OSError as e:
        missing.append(f"mount namespace with a read-only view and private scratch ({e.strerror or e})")
        os.chdir("/")
        spec["work_fallback"] = True
    try:
        if _denied(spec, "pid"):
            raise OSError(errno.EPERM, "denied by IA_SANDBOX_DENY")
        _unshare(libc, CLONE_NEWPID, "pid_for_children")
        applied.append("pidns")
    except OSError as e:
        missing.append(f"pid namespace ({e.strerror or e})")


def _mount_proc(libc, spec: dict) -> str:
    """In the pid namespace's init: a /proc showing only this namespace's processes. With subset=pid
    (Linux 5.8+) nothing machine-wide is there at all; older kernels get a full procfs with the
    machine-wide figures covered. Returns what the program sees; raises OSError when nothing works."""
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        if _denied(spec, "procsubset"):
            raise OSError(errno.EINVAL, "denied by IA_SANDBOX_DENY")
        _mount(libc, "proc", "/proc", "proc", flags, "subset=pid")
        return "fresh /proc (processes only)"
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    _mount(libc, "proc", "/proc", "proc", flags)
    for name in _PROC_HOST_WIDE:
        path = os.path.join("/proc", name)
        if os.path.isfile(path):
            _mount(libc, "/dev/null", path, None, _MS_BIND)
    for name in _PROC_HOST_WIDE_DIRS:
        path = os.path.join("/proc", name)
        if os.path.isdir(path):
            _mount(libc, "tmpfs", path, "tmpfs", flags | _MS_RDONLY, "size=4k,nr_inodes=4")
        elif os.path.exists(path):
            _mount(libc, "/dev/null", path, None, _MS_BIND)
    return "fresh /proc (machine-wide figures covered)"


# -------------------------------------------------------------------------------------- seccomp
# A classic BPF filter, x86_64 only. Refused with EPERM unless noted:
_DENY_X86_64 = (
    101, 310, 311,  # ptrace, process_vm_readv, process_vm_writev
    312, 440, 448, 438,  # kcmp, process_madvise, process_mrelease, pidfd_getfd
    248, 249, 250,  # add_key, request_key, keyctl
    272, 308,  # unshare, setns
    165, 166, 155, 161,  # mount, umount2, pivot_root, chroot
    428, 429, 430, 431, 432, 433, 442,  # open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr
    425, 426, 427,  # io_uring_setup, io_uring_enter, io_uring_register
    206, 207, 208, 209, 210, 333,  # Linux AIO (io_setup ...): its iocbs carry RWF_NOWAIT out of the filter's sight
    321, 298, 323,  # bpf, perf_event_open, userfaultfd
    175, 313, 176, 246, 320,  # init_module, finit_module, delete_module, kexec_load, kexec_file_load
    167, 168, 169, 163,  # swapon, swapoff, reboot, acct
    303, 304,  # name_to_handle_at, open_by_handle_at
    # The host's page cache, read or changed without reading a page (a run could leave bits in it
    # for the next): fadvise64, readahead, mincore, cachestat.
    221, 187, 27, 451,
    # Watching files other runs open (the host's tree is shared, read-only): fanotify, inotify.
    300, 301, 253, 254, 255, 294,
    73,  # flock: a lock on a shared read-only file is seen by every other run
    103,  # syslog: the kernel log (a run can write to it by crashing at a chosen address)
    99,  # sysinfo: the machine's free memory, process count and load
    162, 306,  # sync, syncfs: the machine's writeback (the program's own files are on tmpfs)
)
_NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10
_RWF_NOWAIT = 0x00000008
# fcntl commands on locks, leases and directory notifications (the shared tree again): F_GETLK,
# F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE, F_GETLEASE, F_NOTIFY.
_FCNTL_SHARED = (5, 6, 7, 36, 37, 38, 1024, 1025, 1026)
_MADV_SHARED = (20, 21)  # MADV_COLD, MADV_PAGEOUT: push shared file pages out of memory

_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000


def _errno(code: int) -> int:
    return 0x00050000 | code  # SECCOMP_RET_ERRNO


def _arg(i: int) -> int:
    """Offset of the low 32 bits of argument i in struct seccomp_data (little-endian)."""
    return 16 + 8 * i


def _on(nr: int, body: list) -> list:
    """For syscall `nr`, run `body` (every path through it returns); other syscalls skip it, with
    the syscall number still loaded."""
    return [(_JEQ, 0, len(body), nr)] + body


def _allow_only(arg: int, values, refuse: int) -> list:
    """Allow when argument `arg` is one of `values`, else refuse."""
    code = [(_LD, 0, 0, _arg(arg))]
    for i, value in enumerate(values):
        code.append((_JEQ, len(values) - i, 0, value))  # to the final allow
    return code + [(_RET, 0, 0, refuse), (_RET, 0, 0, _ALLOW)]


def _refuse_values(arg: int, values, refuse: int) -> list:
    """Refuse when argument `arg` is one of `values`, else allow."""
    code = [(_LD, 0, 0, _arg(arg))]
    for i, value in enumerate(values):
        code.append((_JEQ, len(values) - i, 0, value))  # to the final refuse
    return code + [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, refuse)]


def _refuse_bits(arg: int, mask: int, refuse: int) -> list:
    """Refuse when argument `arg` has any bit of `mask`, else allow."""
    return [(_LD, 0, 0, _arg(arg)), (_JSET, 1, 0, mask), (_RET, 0, 0, _ALLOW), (_RET, 0, 0, refuse)]


def seccomp_program() -> bytes | None:
    """The filter (x86_64 only; None elsewhere)."""
    if os.uname().machine != "x86_64":
        return None
    eperm, enosys, eafnosupport = _errno(errno.EPERM), _errno(errno.ENOSYS), _errno(errno.EAFNOSUPPORT)
    code = [
        (_LD, 0, 0, 4), (_JEQ, 1, 0, 0xC000003E), (_RET, 0, 0, _KILL),  # arch must be AUDIT_ARCH_X86_64
        (_LD, 0, 0, 0), (_JGE, 0, 1, 0x40000000), (_RET, 0, 0, eperm),  # no x32 syscalls
    ]
    for nr in _DENY_X86_64:
        code += [(_JEQ, 0, 1, nr), (_RET, 0, 0, eperm)]
    code += [(_JEQ, 0, 1, 435), (_RET, 0, 0, enosys)]  # clone3: its flags are out of the filter's reach
    code += _on(56, _refuse_bits(0, _NS_FLAGS, eperm))  # clone
    # Sockets by allow-list: in an empty network namespace, inet and inet6 reach nothing; every
    # other family is refused (unix: a host daemon's socket file; vsock: the machine-wide vsock
    # port space, shared with the host and other runs; netlink, packet, alg, ...).
    code += _on(41, _allow_only(0, (_AF_INET, _AF_INET6), eafnosupport))  # socket
    code += _on(53, _allow_only(0, (_AF_UNIX,), eafnosupport))  # socketpair
    for nr in (327, 328):  # preadv2, pwritev2: RWF_NOWAIT tells a cached page from one on disk
        code += _on(nr, _refuse_bits(5, _RWF_NOWAIT, eperm))
    code += _on(72, _refuse_values(1, _FCNTL_SHARED, eperm))  # fcntl
    code += _on(28, _refuse_values(2, _MADV_SHARED, eperm))  # madvise
    code += [(_RET, 0, 0, _ALLOW)]
    return b"".join(struct.pack("HBBI", *ins) for ins in code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp() -> bool:
    """NO_NEW_PRIVS, then the filter on this process and its future children. False where no filter
    exists for this architecture (NO_NEW_PRIVS is still set)."""
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "no_new_privs")
    program = seccomp_program()
    if program is None:
        return False
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)), "seccomp")
    return True


# -------------------------------------------------------------------------------------- running


def _enter_program(spec: dict, keep_fds: tuple, parent: int) -> None:
    """In the forked child: its own session, resource limits, drop privileges, seccomp, exec. Never
    returns."""
    limits = spec["limits"]
    # Its own session and process group: kill(0, ...) and killpg reach only the program's processes,
    # never the launcher (whose group the parent kills at the deadline) or init.
    os.setsid()
    # SIGXCPU at the soft CPU limit (its default action ends the program; an ignored disposition
    # would be inherited through exec, so _default_signals reset it); SIGKILL a second later.
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
    if os.getppid() != parent:  # the parent died before prctl took effect
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


def _report(status_fd: int, obj: dict) -> None:
    os.write(status_fd, (json.dumps(obj) + "\n").encode())


def _run_program(spec: dict, status_fd: int) -> int:
    """Fork the program, wait for it, and report its exit status, CPU time and proof on `status_fd`.
    Once the program is forked, anything that goes wrong here is reported as LOST (the run failed),
    never as ERROR (the sandbox failed)."""
    keep: tuple = ()
    proof_r = None
    if spec["harness"]:
        payload = json.dumps(spec["harness"]).encode()
        memfd = os.memfd_create("tests", 0)  # close-on-exec unless kept below
        os.write(memfd, payload)
        os.lseek(memfd, 0, os.SEEK_SET)
        proof_r, proof_w = os.pipe()
        spec["argv"] = spec["argv"] + [str(memfd), str(proof_w)]
        keep = (memfd, proof_w)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _enter_program(spec, keep, me)
        except BaseException as e:  # noqa: BLE001 - report anything, then die
            _report(status_fd, {Report.ERROR: f"exec of {spec['argv'][0]} failed: {e!r}"})
        os._exit(127)
    try:
        _report(status_fd, {Report.STARTED: True})
        for fd in keep:
            os.close(fd)
        while True:
            # Also reaps orphans re-parented to us (we are the pid namespace's init).
            done, wait_status, usage = os.wait4(-1, 0)
            if done == pid:
                break
        try:
            os.killpg(pid, signal.SIGKILL)  # what the program left in its own process group
        except OSError:
            pass
        report = {Report.RETURNCODE: os.waitstatus_to_exitcode(wait_status),
                  Report.CPU_SECONDS: usage.ru_utime + usage.ru_stime}
        if proof_r is not None:
            os.set_blocking(proof_r, False)
            try:
                report[Report.PROOF] = os.read(proof_r, 4096).decode("utf-8", "replace")
            except BlockingIOError:
                report[Report.PROOF] = ""
        _report(status_fd, report)
    except BaseException as e:  # noqa: BLE001
        try:
            _report(status_fd, {Report.LOST: f"the sandbox lost the program ({e!r})"})
        except OSError:
            pass
        return 1
    if spec["uid"] is not None:
        try:  # best effort (the seccomp filter already refuses keyrings): the program's leftovers may
            _clear_keyrings(spec["uid"])  # hold every process slot until init exits
        except OSError:
            pass
    return 0


def _required_missing(spec: dict, missing: list) -> str | None:
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


def _init(libc, spec: dict, applied: list, status_fd: int) -> int:
    """The pid namespace's init: mounts the namespace's own /proc, then runs the program as its child
    and only waits. Signals keep their usual meaning for the program, and the kernel drops the
    default-action signals the program sends to init (handlers reset: see _default_signals)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the launcher
    if "mountns" in applied:
        try:
            _report(status_fd, {Report.PROCFS: _mount_proc(libc, spec)})
        except OSError as e:
            try:  # e.g. a container's masked /proc: hide it instead
                _mount(libc, "tmpfs", "/proc", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY, "size=4k")
                _report(status_fd, {Report.PROCFS: f"empty /proc (no fresh proc: {e.strerror})"})
            except OSError as e2:
                if spec["limits"]["require_isolation"]:
                    _report(status_fd, {Report.REFUSED: f"the sandbox cannot hide the host's /proc ({e2.strerror}); "
                                                        "only for trusted code: SandboxLimits(require_isolation=False)"})
                    return 2
    return _run_program(spec, status_fd)


def launch() -> int:
    _default_signals()
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
    try:
        check_spec(spec)
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
        applied.extend(["own-session", "rlimits"])
        if os.uname().machine == "x86_64":
            applied.append("seccomp")
        applied.append("no_new_privs")
        refusal = _required_missing(spec, missing)
        _report(status_fd, {Report.APPLIED: applied, Report.MISSING: missing} if refusal is None
                else {Report.REFUSED: refusal, Report.APPLIED: applied})
        if refusal is not None:
            return 2
        if spec.get("work_fallback"):
            # No private scratch: the program runs in the parent's work directory.
            os.chdir(spec["work"])
        try:
            _write_files(spec)
        except OSError as e:
            _report(status_fd, {Report.REJECTED: f"the program's files do not fit in its scratch space ({e.strerror})"})
            return 0
        if "pidns" not in applied:
            return _run_program(spec, status_fd)
        init = os.fork()
        if init == 0:
            code = 1
            try:
                _default_signals()
                code = _init(libc, spec, applied, status_fd)
            except BaseException as e:  # noqa: BLE001
                try:
                    _report(status_fd, {Report.LOST: f"the pid namespace's init failed: {e!r}"})
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.waitpid(init, 0)
        return 0
    except BaseException as e:  # noqa: BLE001
        _report(status_fd, {Report.ERROR: f"launcher failed: {e!r}", Report.APPLIED: applied})
        return 1
    finally:
        os.close(status_fd)


def kill_uid(uid: int) -> int:
    """As `uid`, SIGKILL every process of that uid (atomic with respect to fork in the kernel)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kill-uid"]:
        sys.exit(kill_uid(int(sys.argv[2])))
    sys.exit(launch())

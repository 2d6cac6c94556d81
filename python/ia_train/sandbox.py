"""Run untrusted generated programs (model-written code) in an isolated subprocess.

Each program runs in a fresh launcher process (this file, run as a script with only the standard
library) that isolates itself and then execs the program:

- new namespaces where the OS allows them: network (no interfaces up, so no connection leaves the
  process, not even to 127.0.0.1), mount (a size-limited private tmpfs as the working directory and
  private tmpfs over /tmp, /var/tmp and /dev/shm, so nothing written survives the run) and pid (the
  program runs under the namespace's init, a waiting launcher process: when the program exits, init
  exits and the kernel kills every process the program left behind);
  as root these need no user namespace, otherwise an unprivileged user namespace is tried first;
- when run as root, the program drops to an unprivileged uid of its own (one per concurrent slot,
  claimed with a lock file), so RLIMIT_NPROC bounds its own processes (a limit on root binds nothing)
  and, after the run, `kill(-1, SIGKILL)` as that uid reaps anything that escaped the process group.
  Without root the program keeps the caller's uid (inside its user namespace), RLIMIT_NPROC is set
  to the caller's current process count plus the program's allowance, and the pid namespace is what
  guarantees that nothing outlives the run;
- resource limits: CPU seconds, address space, processes, file size (which also caps captured
  output: stdout and stderr go to files), open files, no core dumps;
- a scrubbed environment, start_new_session=True, and SIGKILL to the whole process group at the wall
  deadline.

`SandboxResult.isolation` lists what was actually applied, since containers differ in what they allow.
`run_python` runs one program; `SandboxPool` (a bounded ThreadPoolExecutor over subprocesses) runs many.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
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
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_NOSUID = 2
_MS_NODEV = 4
_PR_SET_PDEATHSIG = 1
_PRIVATE_WORK = "/tmp/sandbox"  # the working directory inside the mount namespace

# Unprivileged uids for sandboxed programs when run as root: one per concurrent slot. High enough to
# be unused by real accounts; override with IA_SANDBOX_UID_BASE.
_UID_BASE = int(os.environ.get("IA_SANDBOX_UID_BASE", "1990000"))
_UID_SLOTS = 512
_LOCK_DIR = os.path.join(tempfile.gettempdir(), "ia_sandbox_uids")

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "error")


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space, not resident memory
    max_processes: int = 32  # RLIMIT_NPROC: the program's processes (see the module docstring)
    file_bytes: int = 8 << 20  # RLIMIT_FSIZE: any one file, stdout and stderr included
    disk_bytes: int = 64 << 20  # size of the private tmpfs working directory (mount namespace only)
    open_files: int = 64
    output_chars: int = 8192  # characters of stdout/stderr kept in the result
    network: bool = False  # True leaves the network namespace alone


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


# ----------------------------------------------------------------------------------------- launcher
# Everything below up to the parent side runs in the launcher process (python -I -S sandbox.py SPEC).


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _unshare(libc, flags: int, ns: str) -> None:
    """unshare(2), checked: the namespace named `ns` in /proc/self/ns must really change (mounting
    into the caller's mount namespace by mistake would cover /tmp for every process on the machine)."""
    before = os.readlink(f"/proc/self/ns/{ns}")
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        after = os.readlink(f"/proc/self/ns/{ns}")
    except FileNotFoundError:  # pid_for_children of a new pid namespace before its first process
        return
    if after == before:
        raise OSError(0, f"unshare left the {ns} namespace unchanged")


def _mount_tmpfs(libc, target: str, options: str) -> None:
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _isolate(spec: dict, applied: list, notes: list) -> None:
    """Enter new namespaces (as many as allowed) and set up the private filesystem view."""
    libc = _libc()
    root = os.geteuid() == 0
    if not root:
        # An unprivileged user namespace gives the capabilities needed for the others.
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(libc, _CLONE_NEWUSER, "user")
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
            applied.append("userns")
        except OSError as e:
            notes.append(f"no user namespace ({e.strerror})")
    if not spec["network"]:
        try:
            _unshare(libc, _CLONE_NEWNET, "net")
            applied.append("netns")
        except OSError as e:
            notes.append(f"network not isolated ({e.strerror})")
    try:
        _unshare(libc, _CLONE_NEWNS, "mnt")  # raises unless the mount namespace is new
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "make / private")
        work, uid = spec["work"], spec["uid"]
        program = open(os.path.join(work, "program.py"), "rb").read()
        # Private, size-limited tmpfs over the shared scratch directories; the program's working
        # directory is a fresh folder inside the new /tmp, so nothing it writes outlives the run.
        for shared in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(shared):
                _mount_tmpfs(libc, shared, f"size={spec['disk_bytes']},mode=1777")
        os.mkdir(_PRIVATE_WORK, 0o700)
        os.chdir(_PRIVATE_WORK)
        with open("program.py", "wb") as f:
            f.write(program)
        if uid is not None:
            os.chown(_PRIVATE_WORK, uid, uid)
            os.chown("program.py", uid, uid)
        spec["env"]["HOME"] = _PRIVATE_WORK
        applied.append("mountns")
    except OSError as e:
        notes.append(f"filesystem not isolated ({e.strerror or e})")
        os.chdir(spec["work"])
    try:
        _unshare(libc, _CLONE_NEWPID, "pid_for_children")
        applied.append("pidns")
    except OSError as e:
        notes.append(f"no pid namespace ({e.strerror})")


def _enter_program(spec: dict) -> None:
    """In the forked child: resource limits, drop privileges, exec. Never returns."""
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
    uid = spec["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # Die with our parent (the launcher, or the pid namespace's init, both killed at the wall
    # deadline); set after setuid, which clears it.
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec["parent_seen"]:  # the parent died before prctl took effect
        os._exit(137)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def _run_program(spec: dict, status_fd: int) -> int:
    """Fork the program, wait for it, and report its exit status and CPU time on `status_fd`."""
    pid = os.fork()
    if pid == 0:
        try:
            spec["parent_seen"] = os.getppid()
            _enter_program(spec)
        except BaseException as e:  # noqa: BLE001 - report anything, then die
            error = {"error": f"exec of {spec['argv'][0]} failed: {e!r}"}
            os.write(status_fd, (json.dumps(error) + "\n").encode())
        os._exit(127)
    while True:
        # Also reaps orphans re-parented to us (we are the pid namespace's init).
        done, wait_status, usage = os.wait4(-1, 0)
        if done == pid:
            break
    report = {"returncode": os.waitstatus_to_exitcode(wait_status), "cpu_seconds": usage.ru_utime + usage.ru_stime}
    os.write(status_fd, (json.dumps(report) + "\n").encode())
    return 0


def _launch(spec: dict) -> int:
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not inherit it
    applied, notes = [], []
    try:
        _isolate(spec, applied, notes)
        if spec["uid"] is not None:
            applied.append(f"uid={spec['uid']}")
        applied.append("rlimits")
        os.write(status_fd, (json.dumps({"applied": applied, "notes": notes}) + "\n").encode())
        if "pidns" not in applied:
            return _run_program(spec, status_fd)
        # The first child is the new pid namespace's init. It only waits: the program runs as its
        # child, so signals keep their usual meaning for the program (the kernel drops default-action
        # signals, SIGXCPU included, sent to a namespace's init), and when init exits after the
        # program, the kernel kills whatever the program left behind.
        init = os.fork()
        if init == 0:
            code = 1
            try:
                _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the launcher
                code = _run_program(spec, status_fd)
            finally:
                os._exit(code)
        os.waitpid(init, 0)
        return 0
    except BaseException as e:  # noqa: BLE001
        os.write(status_fd, (json.dumps({"error": f"launcher failed: {e!r}", "applied": applied}) + "\n").encode())
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
    """Claims an unprivileged uid for one run, system-wide (a lock file per uid)."""

    _local_lock = threading.Lock()

    def __init__(self):
        self.uid = None
        self._fd = None

    def __enter__(self):
        os.makedirs(_LOCK_DIR, mode=0o700, exist_ok=True)
        with self._local_lock:
            for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
                fd = os.open(os.path.join(_LOCK_DIR, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                self.uid, self._fd = uid, fd
                return self
        raise RuntimeError(f"all {_UID_SLOTS} sandbox uids are in use")

    def __exit__(self, *exc):
        os.close(self._fd)


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


def run_python(source: str, limits: SandboxLimits | None = None, *, python: str | None = None) -> SandboxResult:
    """Runs `source` as a Python program in the sandbox and classifies the outcome."""
    limits = limits or SandboxLimits()
    root = os.geteuid() == 0
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="ia_sandbox_")
    try:
        with _UidSlot() if root else _NoSlot() as slot:
            return _run_in(base, source, limits, python or sandbox_python(), slot.uid, start)
    finally:
        _remove_tree(base)


class _NoSlot:
    uid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _run_in(base: str, source: str, limits: SandboxLimits, python: str, uid, start: float) -> SandboxResult:
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    with open(os.path.join(work, "program.py"), "w") as f:
        f.write(source)
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(os.path.join(work, "program.py"), uid, uid)
    # Without root, RLIMIT_NPROC counts all of the user's processes (the sandbox shares their uid):
    # allow those running now plus the program's own. Concurrent runs share that headroom.
    nproc = limits.max_processes if uid is not None else len(_processes_of(os.getuid())) + limits.max_processes
    spec = {
        "work": work,
        "uid": uid,
        "nproc": nproc,
        "network": limits.network,
        "disk_bytes": limits.disk_bytes,
        "limits": asdict(limits),
        "argv": [python, "-I", "program.py"],
        "env": _scrubbed_env(work),
    }
    out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
    status_r, status_w = os.pipe()
    spec["status_fd"] = status_w
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=work,
            env=_scrubbed_env(work),
            pass_fds=(status_w,),
            start_new_session=True,
        )
        os.close(status_w)
        try:
            proc.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)
        proc.wait()
        if uid is not None:
            _reap_uid(uid)
    wall = time.monotonic() - start
    with os.fdopen(status_r) as f:
        reports = [json.loads(line) for line in f if line.strip()]
    stdout, out_size = _read_capped(out_path, limits.output_chars)
    stderr, err_size = _read_capped(err_path, limits.output_chars)
    merged = {k: v for r in reports for k, v in r.items()}
    isolation = tuple(merged.get("applied", ())) + tuple(f"note: {n}" for n in merged.get("notes", ()))
    code = merged.get("returncode")
    status, reason = _classify(merged, code, timed_out, stderr, max(out_size, err_size), limits)
    return SandboxResult(status, reason, code, stdout, stderr, wall, isolation)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(report: dict, code, timed_out: bool, stderr: str, out_size: int, limits: SandboxLimits):
    if timed_out:
        return "timeout", f"wall time limit {limits.wall_seconds:g} s exceeded"
    if "error" in report:  # the sandbox itself failed (e.g. the interpreter could not be executed)
        return "error", report["error"]
    if code is None:
        return "error", "the launcher died without reporting the program's exit"
    cpu = report.get("cpu_seconds", 0.0)
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= 0.9 * limits.cpu_seconds):
        return "timeout", f"CPU time limit {limits.cpu_seconds} s exceeded (signal {-code})"
    if out_size >= limits.file_bytes or code == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit", f"output or file size limit {limits.file_bytes} bytes exceeded"
    if code == 0:
        return "passed", "exit code 0"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory", f"memory limit {limits.memory_bytes} bytes exceeded"
    if code < 0:
        return "failed", f"killed by signal {signal.Signals(-code).name}"
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return "failed", f"exit code {code}: {last[:200]}"


def _remove_tree(path: str) -> None:
    # The program's files belong to its uid and may be read-only: as root this always succeeds;
    # otherwise make directories writable first.
    for dirpath, dirnames, _ in os.walk(path, topdown=True):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o700)
            except OSError:
                pass
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class SandboxPool:
    """Runs many programs in parallel on a bounded pool of threads, one subprocess each."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None, python: str | None = None):
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.limits = limits or SandboxLimits()
        self.python = python
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ia-sandbox")

    def map(self, sources: Sequence[str], limits: SandboxLimits | None = None) -> list[SandboxResult]:
        limits = limits or self.limits
        return list(self._executor.map(lambda s: run_python(s, limits, python=self.python), sources))

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
    sys.exit(_launch(json.loads(sys.argv[1])))

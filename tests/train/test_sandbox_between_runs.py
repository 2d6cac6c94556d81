"""Nothing passes between sandbox runs, and no completion can take the trainer down: the syscalls that
read or change the host's page cache, watch or lock shared files, or report machine-wide figures are
refused; sockets are allowed by family; the run sees no /sys, no host-wide /proc and five devices;
the page cache a run brought in leaves with it; the launcher's own failures after the program
started are failed runs; and a training run's worth of hostile completions, in both modes, never
scores a wrong answer 1 and never raises."""

import ast
import json
import os
import sys
import time

import pytest
from ia_train.sandbox import (
    SPEC_KEYS,
    Report,
    SandboxLimits,
    classify,
    make_spec,
    run_python,
    run_tests,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.train.sandbox_attacks import attacks, training, unprivileged

FAST = SandboxLimits(wall_seconds=5.0, cpu_seconds=2, memory_bytes=512 << 20, max_processes=16)
X86_64 = os.uname().machine == "x86_64"


def _probe(source: str) -> dict:
    result = run_python(source, FAST)
    assert result.status == "passed", result
    return json.loads(result.stdout.strip().splitlines()[-1])


_SYSCALLS = r"""
import ctypes, errno, fcntl, json, mmap, os, struct
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def errno_of(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else ctypes.get_errno()
fd = os.open("/etc/hostname", os.O_RDONLY)
buf = ctypes.create_string_buffer(4096)
out["fadvise64"] = errno_of(221, fd, 0, 0, 4)  # POSIX_FADV_DONTNEED
out["readahead"] = errno_of(187, fd, 0, 4096)
out["mincore"] = errno_of(27, 0, 4096, buf)
out["cachestat"] = errno_of(451, fd, buf, buf, 0)
iov = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 8)
out["preadv2 RWF_NOWAIT"] = errno_of(327, fd, iov, 1, 0, 0, 0x8)
out["preadv2 RWF_HIPRI"] = errno_of(327, fd, iov, 1, 0, 0, 0x1)  # allowed: not a cache probe
out["pwritev2 RWF_NOWAIT"] = errno_of(328, 1, iov, 1, -1, -1, 0x8)
out["fanotify_init"] = errno_of(300, 0x200, 0)
out["inotify_init1"] = errno_of(294, 0)
out["flock"] = errno_of(73, fd, 2 | 4)
lock = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0) + bytes(4)
for name, cmd in (("F_SETLK", 6), ("F_GETLK", 5), ("F_OFD_SETLK", 37), ("F_NOTIFY", 1026), ("F_SETLEASE", 1024)):
    out["fcntl " + name] = errno_of(72, fd, cmd, ctypes.create_string_buffer(lock, 32))
out["fcntl F_GETFD"] = errno_of(72, fd, 1)  # allowed
out["sysinfo"] = errno_of(99, buf)
out["syslog"] = errno_of(103, 3, buf, 100)
out["io_setup"] = errno_of(206, 1, buf)
out["sync"] = errno_of(162)
out["pidfd_getfd"] = errno_of(438, 0, 0, 0)
anon = mmap.mmap(-1, 4096)
address = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(anon)))
out["madvise MADV_PAGEOUT"] = errno_of(28, address, 4096, 21)
out["madvise MADV_COLD"] = errno_of(28, address, 4096, 20)
out["madvise MADV_DONTNEED"] = errno_of(28, address, 4096, 4)  # allowed: malloc needs it
print(json.dumps(out))
"""


@pytest.mark.skipif(not X86_64, reason="the seccomp filter is x86_64 only")
def test_syscalls_that_reach_other_runs_are_refused():
    """Page-cache probes (read a page's state or evict it without reading it), file watches and
    locks on the shared tree, the kernel log, machine-wide memory figures: EPERM. Their harmless
    neighbours still work."""
    out = _probe(_SYSCALLS)
    allowed = {"preadv2 RWF_HIPRI", "fcntl F_GETFD", "madvise MADV_DONTNEED"}
    for name, err in out.items():
        if name in allowed:
            assert err in (0, 95), (name, err)  # 95: EOPNOTSUPP (no polled I/O on this file)
        else:
            assert err == 1, (name, err)  # EPERM from the filter


_SOCKETS = r"""
import json, socket
out = {}
for name in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_VSOCK", "AF_NETLINK", "AF_PACKET", "AF_ALG", "AF_TIPC", "AF_CAN"):
    family = getattr(socket, name, None)
    if family is None:
        continue
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
        try:
            socket.socket(family, kind).close()
            out[name] = "created"
            break
        except OSError as e:
            out[name] = e.errno
a, b = socket.socketpair()
a.sendall(b"x")
out["socketpair"] = b.recv(1).decode()
print(json.dumps(out))
"""


@pytest.mark.skipif(not X86_64, reason="the seccomp filter is x86_64 only")
def test_sockets_by_family_allow_list():
    """inet and inet6 (which reach nothing in the empty network namespace) and socketpair; every other
    family, vsock included, is refused with EAFNOSUPPORT."""
    out = _probe(_SOCKETS)
    assert out.pop("AF_INET") == "created" and out.pop("AF_INET6") == "created"
    assert out.pop("socketpair") == "x"
    assert out and all(err == 97 for err in out.values()), out


_VIEW = r"""
import json, os
print(json.dumps({
    "proc": sorted(p for p in os.listdir("/proc") if not p.isdigit()),
    "sys": os.listdir("/sys"),
    "dev": sorted(os.listdir("/dev")),
    "cgroup": sorted({line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")}),
    "urandom": len(open("/dev/urandom", "rb").read(8)),
    "null": open("/dev/null", "w").write("x"),
    "cpus": os.cpu_count(),
}))
"""


def test_the_run_sees_no_machine_wide_state():
    """/proc has the run's processes and nothing machine-wide, /sys is empty, /dev holds five devices
    (no ptys, kernel log, vsock), and /proc/self/cgroup names no host path."""
    result = run_python(_VIEW, FAST)
    assert result.status == "passed", result
    view = json.loads(result.stdout)
    assert "fresh /proc (processes only)" in result.isolation or "fresh /proc (machine-wide figures covered)" in result.isolation
    if "fresh /proc (processes only)" in result.isolation:
        assert set(view["proc"]) <= {"self", "thread-self"}, view["proc"]
    assert view["sys"] == []
    assert view["dev"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    assert view["cgroup"] == ["/"]
    assert view["urandom"] == 8 and view["null"] == 1 and view["cpus"] >= 1
    assert "cgroupns" in result.isolation and "private-dev" in result.isolation and "own-session" in result.isolation


def test_procfs_without_subset_covers_the_machine_wide_figures(monkeypatch):
    """Kernels before 5.8 cannot mount a /proc of processes only: the full one has its machine-wide
    files and directories covered (forced here with IA_SANDBOX_DENY)."""
    monkeypatch.setenv("IA_SANDBOX_DENY", "procsubset")
    probe = (
        "import json, os\n"
        "seen = {}\n"
        "for p in ('/proc/meminfo', '/proc/loadavg', '/proc/stat', '/proc/locks', '/proc/sys/fs/file-nr', '/proc/self/status'):\n"
        "    try:\n        seen[p] = len(open(p).read())\n    except OSError as e:\n        seen[p] = e.errno\n"
        "print(json.dumps(seen))\n"
    )
    result = run_python(probe, FAST)
    assert result.status == "passed", result
    assert "fresh /proc (machine-wide figures covered)" in result.isolation
    seen = json.loads(result.stdout)
    assert seen.pop("/proc/self/status") > 0
    assert all(v in (0, 2) for v in seen.values()), seen  # empty, or not there at all


def _cached(path: str, offset: int) -> bool:
    """Is the page at `offset` cached? cachestat (Linux 6.5+, for a caller who may write the file,
    such as root) reads the state without touching the page; otherwise the time of a first read of
    it (from memory a few microseconds, from disk tens)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        window, stats = (ctypes.c_uint64 * 2)(offset, 4096), (ctypes.c_uint64 * 5)()
        if ctypes.CDLL(None, use_errno=True).syscall(451, fd, window, stats, 0) == 0:
            return stats[0] > 0
        start = time.perf_counter_ns()
        os.pread(fd, 1, offset)
        return time.perf_counter_ns() - start < 20_000
    finally:
        os.close(fd)


def test_the_page_cache_a_run_brought_in_leaves_with_it():
    """A run reads pages nobody had cached; when it ends they are evicted again (its cgroup's memory
    is reclaimed), so the next run cannot tell which pages it read. Needs a cgroup for the run."""
    store = attacks.page_cache_store()
    if store is None:
        pytest.skip("no large system file here")
    offsets = [(40 << 20) + i * (1 << 20) for i in range(4)]
    for offset in offsets:
        attacks.drop_cache(store, offset, 1 << 20)
    result = run_python(f"import os\nfd = os.open({store!r}, os.O_RDONLY)\nfor o in {offsets!r}:\n    os.pread(fd, 1, o)\n",
                        FAST)
    assert result.status == "passed", result
    if not any(i.startswith("cgroup") for i in result.isolation):
        pytest.skip("no cgroup for the run here: the page cache stays (docs/sandbox.md)")
    assert [_cached(store, o) for o in offsets] == [False] * 4
    fd = os.open(store, os.O_RDONLY)
    os.pread(fd, 1, offsets[0])
    os.close(fd)
    assert _cached(store, offsets[0])  # the check sees a page read outside the sandbox


def test_a_launcher_lost_after_the_program_started_is_a_failed_run():
    """No exit status: before the program started it is the sandbox's failure ("error"); after, the
    program's doing (a failed run, reason recorded), whatever killed the launcher or init."""
    limits = SandboxLimits()
    assert classify({}, False, "", 0, limits, False)[0] == "error"
    status, reason = classify({Report.STARTED: True}, False, "", 0, limits, False)
    assert status == "failed" and "after it started" in reason
    status, reason = classify({Report.STARTED: True, Report.LOST: "init failed: KeyboardInterrupt()"}, False, "", 0,
                              limits, False)
    assert status == "failed" and "KeyboardInterrupt" in reason
    assert classify({Report.STARTED: True, Report.ERROR: "exec of x failed"}, False, "", 0, limits, False)[0] == "error"


def test_a_completion_with_a_lone_surrogate_fails_in_the_program_not_the_launcher():
    result = run_tests("def f():\n    return '\ud800'\n", "def check(c):\n    assert c() == 'x'\n", "f", FAST)
    assert result.status == "failed", result
    assert "SyntaxError" in result.reason or "decode" in result.reason or "load" in result.reason, result.reason


def test_the_launcher_owns_the_spec_and_is_stdlib_only():
    with pytest.raises(ValueError, match="missing.*'uid'"):
        make_spec(**{k: None for k in SPEC_KEYS - {"uid"}})
    with pytest.raises(ValueError, match="unknown.*'shell'"):
        make_spec(**{k: None for k in SPEC_KEYS}, shell=True)
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "python", "ia_train", "sandbox")
    for name in ("launcher.py", "harness.py", "runner.py"):  # run as scripts inside and outside the sandbox
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module.split(".")[0] in sys.stdlib_module_names | {"__future__"}, name
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names), name


ROUNDS = 5


def _check_training(summary: dict):
    assert summary["raised"] == [], summary["raised"]
    assert summary["wrong_scored_1"] == [], summary["wrong_scored_1"]
    assert summary["correct_scored_0"] == [], summary["correct_scored_0"]
    assert summary["hostile"] == ROUNDS * len(training.hostile_completions()) >= 100
    assert summary["completions"] >= 200


@pytest.mark.slow
def test_a_training_run_of_hostile_completions_as_this_user():
    """Five batches, each of every hostile completion (26) and 15 correct solutions, shuffled, scored
    two at a time as training does (root: slot uids; otherwise the user-namespace mode)."""
    _check_training(training.train(rounds=ROUNDS))


@pytest.mark.slow
def test_a_training_run_of_hostile_completions_unprivileged():
    """The same run in the user-namespace mode, where the signal attacks used to end the trainer."""
    why = unprivileged.unavailable()
    if why:
        pytest.skip(why)
    proc = unprivileged.run("training.py", ["--json", "--rounds", str(ROUNDS)], timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("IA_TRAINING_RESULTS ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    _check_training(json.loads(line.split(" ", 1)[1]))

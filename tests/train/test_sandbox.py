"""The sandbox against hostile programs: each must fail cleanly with a reason, and nothing it starts may
escape its limits or outlive its deadline. The hostile suite of tests/train/sandbox_attacks runs here
as the current user and, when that is root, again as an unprivileged uid."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ia_train.sandbox import (
    SandboxLimits,
    SandboxPool,
    SandboxUnavailable,
    parse_reports,
    processes_of,
    read_verdict,
    remove_tree,
    run_python,
    run_tests,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

FAST = SandboxLimits(wall_seconds=2.0, cpu_seconds=1, memory_bytes=512 << 20, max_processes=16)


def _uid(result):
    for item in result.isolation:
        if item.startswith("uid="):
            return int(item[4:])
    return None


def _assert_nothing_left(result):
    """No process of the run's uid survives it (root runs, where each run has its own uid)."""
    uid = _uid(result)
    if uid is not None:
        assert processes_of(uid) == [], f"processes of uid {uid} outlived the run"


def _assert_dead(pid: int):
    """The process is gone (or a zombie waiting for a reaper: it runs no code)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state in ("Z", "X"), f"process {pid} is still alive (state {state})"


def test_ordinary_program_passes_and_reports_isolation():
    result = run_python("import sys\nprint('hello', sum(range(10)))\nprint('warn', file=sys.stderr)", FAST)
    assert result.status == "passed", result
    assert result.passed and result.returncode == 0
    assert result.stdout.strip() == "hello 45"
    assert result.stderr.strip() == "warn"
    assert "rlimits" in result.isolation
    assert result.wall_seconds > 0


def test_failing_program_reports_the_exception():
    result = run_python("def f():\n    raise KeyError('missing')\nf()", FAST)
    assert result.status == "failed"
    assert result.returncode == 1
    assert "KeyError" in result.reason


def test_sandbox_failure_is_an_error_not_a_wrong_answer():
    result = run_python("print(1)", FAST, python="/nonexistent/python3")
    assert result.status == "error"
    assert "exec of /nonexistent/python3 failed" in result.reason


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    limits = SandboxLimits(wall_seconds=20.0, cpu_seconds=1)  # the CPU limit must act first
    start = time.monotonic()
    result = run_python("while True:\n    pass", limits)
    assert result.status == "timeout"
    assert "CPU time" in result.reason
    assert time.monotonic() - start < 10
    _assert_nothing_left(result)


def test_sleeping_program_is_stopped_at_the_wall_deadline():
    result = run_python("import time\ntime.sleep(60)", FAST)
    assert result.status == "timeout"
    assert "wall time" in result.reason
    assert result.wall_seconds < FAST.wall_seconds + 2


def test_fork_bomb_is_contained_and_killed():
    bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = run_python(bomb, FAST)
    assert result.status == "timeout", result
    _assert_nothing_left(result)


def test_fork_bomb_hits_the_process_limit():
    counter = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "finally:\n"
        "    print('forked', n, flush=True)\n"
    )
    result = run_python(counter, FAST)
    assert result.status == "failed"
    assert "Resource temporarily unavailable" in result.reason or "BlockingIOError" in result.reason
    forked = int(result.stdout.split()[1])
    assert forked < FAST.max_processes
    _assert_nothing_left(result)


def test_memory_bomb_fails_with_memory_status():
    # A generous wall limit: the memory limit must trip first even on a loaded machine.
    limits = SandboxLimits(wall_seconds=15.0, cpu_seconds=10, memory_bytes=512 << 20, max_processes=16)
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))", limits)
    assert result.status == "memory", result
    assert "memory limit" in result.reason


def test_huge_output_is_capped():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", FAST)
    assert result.status == "output_limit", result
    assert len(result.stdout) < FAST.output_chars + 100
    assert result.stdout.startswith("xxxx")
    assert "truncated" in result.stdout


def test_writing_outside_its_directory_fails(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    target = private / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('pwned')", FAST)
    assert result.status == "failed"
    assert not target.exists()


def test_files_written_to_shared_tmp_do_not_escape():
    target = f"/tmp/ia_sandbox_escape_{os.getpid()}_{time.time_ns()}"
    result = run_python(f"open({target!r}, 'w').write('pwned')\nprint('wrote')", FAST)
    if "mountns" not in result.isolation:
        pytest.skip(f"no mount namespace here: {result.isolation}")
    assert not os.path.exists(target)


def test_deleting_files_fails(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("important")
    result = run_python(f"import os\nos.remove({str(victim)!r})", FAST)
    assert result.status == "failed"
    assert victim.read_text() == "important"


def test_parent_environment_is_invisible(monkeypatch):
    secret = f"s3cret-{time.time_ns()}"
    monkeypatch.setenv("IA_SANDBOX_TEST_SECRET", secret)
    spy = (
        "import os\n"
        "print(dict(os.environ))\n"
        "try:\n"
        f"    print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
        "except OSError as e:\n"
        "    print('denied', e)\n"
    )
    result = run_python(spy, FAST)
    assert result.status == "passed"
    assert "PATH" in result.stdout  # the spy did print the environment it sees
    assert secret not in result.stdout
    assert "IA_SANDBOX_TEST_SECRET" not in result.stdout


def test_network_connection_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'leak')\n"
            "print('connected')\n"
        )
        result = run_python(client, FAST)
        if "netns" not in result.isolation:
            pytest.skip(f"no network namespace here: {result.isolation}")
        assert result.status == "failed"
        assert "connected" not in result.stdout
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()


_SLEEPER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {token!r}], "
    "start_new_session={new_session})\n"
    "import time; time.sleep(0.5)\n"
    "{after}\n"
)


def _live_with_token(token: str) -> list[int]:
    """Host pids of live processes whose command line holds `token` (the run's own /proc shows
    namespace pids, so the test finds its grandchild by a marker instead)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


@pytest.mark.parametrize("new_session", [False, True], ids=["same-group", "own-session"])
def test_child_sleeping_past_the_deadline_is_killed(new_session):
    token = f"ia-sleeper-{time.time_ns()}"
    program = _SLEEPER.format(token=token, new_session=new_session, after="time.sleep(60)")
    result = run_python(program, FAST)
    assert result.status == "timeout"
    for pid in _live_with_token(token):
        _assert_dead(pid)
    _assert_nothing_left(result)


def test_child_left_running_by_a_finished_program_is_killed():
    token = f"ia-sleeper-{time.time_ns()}"
    program = _SLEEPER.format(token=token, new_session=True, after="print('main done', flush=True)")
    result = run_python(program, FAST)
    assert result.status == "passed"
    time.sleep(0.2)
    for pid in _live_with_token(token):
        _assert_dead(pid)
    _assert_nothing_left(result)


def test_pool_runs_many_programs_in_order():
    sources = [f"print({i} * {i})" for i in range(6)] + ["raise SystemExit(3)", "while True: pass"]
    with SandboxPool(workers=3, limits=FAST) as pool:
        results = pool.map(sources)
    assert [r.stdout.strip() for r in results[:6]] == [str(i * i) for i in range(6)]
    assert all(r.status == "passed" for r in results[:6])
    assert results[6].status == "failed" and results[6].returncode == 3
    assert results[7].status == "timeout"
    for r in results:
        _assert_nothing_left(r)


# ------------------------------------------------------------------------------ proof of completion

_TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"


def test_run_tests_passes_only_with_proof():
    good = run_tests("def square(x):\n    return x * x\n", _TESTS, "square", FAST)
    assert good.status == "passed", good
    assert "proof" in good.reason
    wrong = run_tests("def square(x):\n    return x + x\n", _TESTS, "square", FAST)
    assert wrong.status == "failed" and "AssertionError" in wrong.reason
    # The solution cannot forge the verdict: it never holds the nonce or the proof pipe.
    forged = run_tests(
        "import os, sys\nprint('0' * 32 + ' {\"ok\": true, \"reason\": \"x\"}')\nos._exit(0)\ndef square(x):\n    return 0\n",
        _TESTS, "square", FAST,
    )
    assert forged.status == "failed", forged


def test_run_tests_tests_may_call_the_function_by_name():
    tests = "def check(candidate):\n    assert square(3) == candidate(3) == 9\n"
    assert run_tests("def square(x):\n    return x * x\n", tests, "square", FAST).passed


def test_proof_parsing_is_strict():
    nonce = "ab" * 16
    assert read_verdict(f'{nonce} {{"ok": true, "reason": "fine"}}\n', nonce) == (True, "fine")
    assert read_verdict(f'{"cd" * 16} {{"ok": true, "reason": "fine"}}\n', nonce) is None
    assert read_verdict(f'{nonce} {{"ok": 1, "reason": "fine"}}\n', nonce) == (False, "fine")
    assert read_verdict(f"{nonce} not json", nonce) is None
    assert read_verdict(None, nonce) is None


def test_status_reports_are_parsed_defensively():
    raw = b'{"applied": ["netns"]}\n\xff\xfe garbage {{{\n[1, 2]\n{"returncode": 0}\n{"returncode": 1, "applied": []}\n'
    assert parse_reports(raw) == {"applied": ["netns"], "returncode": 0}


def test_pool_self_test_passes_once_and_names_a_broken_sandbox():
    with SandboxPool(workers=1, limits=FAST) as pool:
        first = pool.verify()
        assert first.passed and "proof" in first.reason
        assert pool.verify() is first  # cached
        assert pool.verify(force=True) is not first
    with SandboxPool(workers=1, limits=FAST, python="/nonexistent/python3") as broken:
        with pytest.raises(SandboxUnavailable, match="self-test .error: exec of /nonexistent/python3 failed"):
            broken.verify()
        # A batch still gives one result per program (the parent's side never loses a batch).
        assert [r.status for r in broken.map_tests([("x = 1", "def check(c):\n    pass\n", "f")])] == ["error"]


# ------------------------------------------------------------------------------------ fail closed


def test_missing_namespaces_are_refused(monkeypatch):
    for ns, words in (("net", "network namespace"), ("pid", "pid namespace"), ("ipc", "IPC namespace"), ("mnt", "mount namespace")):
        monkeypatch.setenv("IA_SANDBOX_DENY", ns)
        with pytest.raises(SandboxUnavailable, match=words) as info:
            run_python("print('ran')", FAST)
        assert "require_isolation=False" in str(info.value)
    monkeypatch.setenv("IA_SANDBOX_DENY", "net")
    trusted = run_python("print('ran')", SandboxLimits(wall_seconds=5.0, require_isolation=False))
    assert trusted.passed and any(i.startswith("missing: network namespace") for i in trusted.isolation)


_DENIED = r"""
import ctypes, json, struct, sys
from ia_train import sandbox
from ia_train.tasks.humaneval import HumanEvalTask

# Like a container's default seccomp profile: no unshare, setns or mount, no namespace flags to clone.
NS = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000 | 0x80
LD, JEQ, JSET, RET, ALLOW, EPERM = 0x20, 0x15, 0x45, 0x06, 0x7FFF0000, 0x00050001
code = [(LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, 0x80000000), (LD, 0, 0, 0)]
for nr in (272, 308, 165):  # unshare, setns, mount
    code += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
code += [(JEQ, 0, 1, 435), (RET, 0, 0, 0x00050026)]  # clone3: ENOSYS (libc falls back to clone)
code += [(JEQ, 0, 3, 56), (LD, 0, 0, 16), (JSET, 0, 1, NS), (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW)]
program = b"".join(struct.pack("HBBI", *ins) for ins in code)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
buf = ctypes.create_string_buffer(program, len(program))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))), 0, 0) == 0
out = {}
try:
    sandbox.run_python("print(1)")
    out["run_python"] = "ran"
except sandbox.SandboxUnavailable as e:
    out["run_python"] = str(e)
task = HumanEvalTask(workers=1)
problem = task.problems("eval", 0, 0)[0]
try:
    task.score_batch([problem], [problem.meta["canonical_solution"]])
    out["humaneval"] = "scored"
except sandbox.SandboxUnavailable as e:
    out["humaneval"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_fallback_is_refused_where_namespaces_are_forbidden():
    """A real condition: the caller runs under a seccomp filter that forbids namespaces and mounts."""
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter is x86_64 only")
    proc = subprocess.run([sys.executable, "-c", _DENIED], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[7:])
    assert "cannot isolate" in out["run_python"] and "network namespace" in out["run_python"]
    assert "cannot isolate" in out["humaneval"]


# ----------------------------------------------------------------------------- the kernel's guards


def test_seccomp_and_scratch_inside_the_sandbox():
    probe = r"""
import ctypes, os, socket, threading, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
def denied(nr, *args):
    r = libc.syscall(nr, *args)
    return r == -1 and ctypes.get_errno() in (1, 38)
print('ptrace', denied(101, 0, 1, 0, 0))
print('unshare', denied(272, 0x10000000))
print('keyctl', denied(250, 0, -4, 0))
print('io_uring', denied(425, 8, None))
try:
    socket.socket(socket.AF_UNIX); print('af_unix', False)
except OSError:
    print('af_unix', True)
a, b = socket.socketpair(); print('socketpair', a.fileno() > 0)
t = threading.Thread(target=lambda: None); t.start(); t.join(); print('threads', True)
print('subprocess', subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True).stdout.strip() == b'7')
for path in ('/run/lock/x', '/dev/shm/x', '/var/tmp/x', '/tmp/x'):
    open(path, 'w').write('x')
print('scratch', True)
try:
    open('/usr/ia_sandbox_probe', 'w'); print('rofs', False)
except OSError:
    print('rofs', True)
print('procs', sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:3])
"""
    result = run_python(probe, FAST)
    assert result.status == "passed", result
    seen = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for key in ("ptrace", "unshare", "keyctl", "io_uring", "af_unix") if "seccomp" in result.isolation else ():
        assert seen[key] == "True", (key, result.stdout)
    for key in ("socketpair", "threads", "subprocess", "scratch", "rofs"):
        assert seen[key] == "True", (key, result.stdout)
    assert seen["procs"].startswith("[1, "), result.stdout  # its own pid namespace's /proc


def test_remove_tree_never_follows_symlinks(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    victim.chmod(0o500)
    doomed = tmp_path / "doomed"
    (doomed / "sub").mkdir(parents=True)
    (doomed / "link").symlink_to(victim)
    (doomed / "sub" / "link").symlink_to(victim)
    (doomed / "sub").chmod(0o000)
    remove_tree(str(doomed))
    assert not doomed.exists()
    assert (victim.stat().st_mode & 0o777) == 0o500 and (victim / "keep.txt").read_text() == "keep"
    victim.chmod(0o700)


# ------------------------------------------------------------------------------ the hostile suite

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.train.sandbox_attacks import attacks, unprivileged  # noqa: E402

# Known to remain (docs/sandbox.md, "What remains"): the kernel's inode counter carries a few bits
# from one run to the next whatever the mode.
REMAINS = {"escape: bits to the next run in the inode counter"}
# Without a cgroup for the run (an unprivileged caller with no delegated cgroup) only per-process
# limits hold, and the page cache a run brought in cannot be given back.
WITHOUT_CGROUP = {"escape: memory spread across children", "escape: bits to the next run in the page cache (timing)"}


def _assert_all_held(results: dict, allow: set = frozenset()):
    breaches = {k: v[1] for k, v in results.items() if v[0] and k not in allow}
    assert not breaches, "\n".join(f"{k}: {v}" for k, v in breaches.items())


@pytest.fixture(scope="module")
def attack_results():
    shared = attacks.make_shared_dir()
    try:
        yield attacks.run_all(shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _without_cgroup_allowance():
    probe = run_python("pass", FAST)
    return set() if any(i.startswith("cgroup") for i in probe.isolation) else WITHOUT_CGROUP


def test_hostile_suite_as_this_user(attack_results):
    _assert_all_held(attack_results, REMAINS | _without_cgroup_allowance())
    # The new attack classes really ran (an attack that errors out is no proof).
    for name in ("crash: kill(1, SIGINT): the pid namespace's init", "escape: a vsock port (machine-wide)",
                 "fake: a table of failed asserts in the page cache", "escape: a lock on a shared file"):
        assert "attack harness error" not in attack_results[name][1], attack_results[name]


def test_hostile_suite_as_an_unprivileged_user():
    """Root drops to an unprivileged uid (setpriv) and runs the suite there: user-namespace mode."""
    why = unprivileged.unavailable()
    if why:
        pytest.skip(why)
    shared = attacks.make_shared_dir(owner=unprivileged.NOBODY)
    try:
        proc = unprivileged.run("attacks.py", ["--json", "--shared", shared])
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("IA_ATTACK_RESULTS ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(line.split(" ", 1)[1])
    if all("SandboxUnavailable" in v[1] for v in results.values() if not v[0]):
        pytest.skip("no user namespaces for unprivileged users here: every run was refused (fail closed)")
    _assert_all_held(results, REMAINS | WITHOUT_CGROUP)


def test_leftovers_holding_every_process_slot_still_give_a_result():
    """Children left behind fill the run's process allowance: the sandbox still reports normally."""
    filler = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        break\n"
        "print('filled')\n"
    )
    limits = SandboxLimits(wall_seconds=5.0, cpu_seconds=2, max_processes=8)
    result = run_python(filler, limits)
    assert result.status == "passed" and "filled" in result.stdout, result
    _assert_nothing_left(result)

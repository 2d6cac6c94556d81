"""The sandbox against hostile programs: each must fail cleanly with a reason, and nothing it starts may
escape its limits or outlive its deadline."""

import os
import socket
import sys
import time

import pytest

from ia_train.sandbox import SandboxLimits, SandboxPool, _processes_of, run_python

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
        assert _processes_of(uid) == [], f"processes of uid {uid} outlived the run"


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
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import os, time; print(os.readlink(\"/proc/self\"), flush=True); time.sleep(60)'], "
    "start_new_session={new_session})\n"
    "import time; time.sleep(0.5)\n"
    "{after}\n"
)


@pytest.mark.parametrize("new_session", [False, True], ids=["same-group", "own-session"])
def test_child_sleeping_past_the_deadline_is_killed(new_session):
    # The grandchild prints its pid as /proc sees it (the host pid, whatever its pid namespace).
    program = _SLEEPER.format(new_session=new_session, after="time.sleep(60)")
    result = run_python(program, FAST)
    assert result.status == "timeout"
    pid = int(result.stdout.split()[0])
    _assert_dead(pid)
    _assert_nothing_left(result)


def test_child_left_running_by_a_finished_program_is_killed():
    program = _SLEEPER.format(new_session=True, after="print('main done', flush=True)")
    result = run_python(program, FAST)
    assert result.status == "passed"
    pid = int(result.stdout.split()[0])
    time.sleep(0.2)
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

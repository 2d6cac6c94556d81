"""The public entry points: run_python, run_tests, SandboxPool (with its self-test), run_many; and
one run from the parent's side: the uid slot, the cgroup, the spec, the launcher, the status pipe
read against the deadline, the verdict."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from . import launcher
from .cgroups import create_cgroup
from .filesystem import interpreter_paths, private_paths, remove_tree, sandbox_python
from .launcher import Report
from .limits import SandboxLimits, SandboxResult, SandboxUnavailable
from .uids import LAUNCHER, NoSlot, UidSlot, processes_of
from .verdict import classify, parse_reports, tests_verdict

_STATUS_CAP = 1 << 20  # bytes of status reports read from the launcher
_HERE = Path(__file__).resolve().parent
# The two programs of run_tests, run with `python -I -c` (their directory is hidden from programs).
HARNESS = (_HERE / "harness.py").read_text()
RUNNER = (_HERE / "runner.py").read_text()
_log = logging.getLogger("ia_train.sandbox")
_warned: set = set()
_WARM_SECONDS = 600.0  # the warm-up is repeated this often (the kernel may have evicted its pages)
_warm_lock = threading.Lock()
_warmed: dict[str, float] = {}  # interpreter -> when its last warm-up started


def run_python(source: str, limits: SandboxLimits | None = None, *, python: str | None = None,
               hidden_paths: Sequence[str] = ()) -> SandboxResult:
    """Runs `source` as a Python program in the sandbox and classifies the outcome ("passed": exit
    code 0, which any program can fake: use `run_tests` for rewards)."""
    python = python or sandbox_python()
    return _execute({"program.py": source}, [python, "-I", "program.py"], limits, None, hidden_paths, python)


def run_tests(solution: str, tests: str, entry_point: str, limits: SandboxLimits | None = None, *,
              python: str | None = None, hidden_paths: Sequence[str] = ()) -> SandboxResult:
    """Scores `solution` (source defining `entry_point`) against trusted `tests` (source defining
    `check(candidate)`): "passed" only with the harness's proof that `check` returned (see
    docs/sandbox.md). `hidden_paths` (e.g. the dataset's directory) are not visible to the program."""
    return _run_tests(solution, tests, entry_point, limits, python, hidden_paths, reclaim=True)


def _run_tests(solution, tests, entry_point, limits, python, hidden_paths, reclaim: bool, warm: bool = True):
    python = python or sandbox_python()
    harness = {"tests": tests, "entry_point": entry_point, "runner": RUNNER}
    return _execute({"solution.py": solution}, [python, "-I", "-c", HARNESS], limits, harness, hidden_paths, python,
                    reclaim, warm)


# A trusted solution for the self-test and the warm-up. Each run gives back the page cache it brought
# in (cgroups.Cgroup.release), so a file page no other process keeps cached would be read in again by
# every run: the warm-up, a trusted run that keeps its pages (charged to the caller), leaves the
# interpreter, the harness's modules and what correct HumanEval solutions import most in the cache.
_SELF_TEST = (
    "import bisect, collections, fractions, functools, hashlib, heapq, itertools, math, re, statistics, string, typing\n\n"
    "def square(x):\n    return x * x\n",
    "def check(candidate):\n    assert candidate(3) == 9\n    assert square(-2) == 4\n",
    "square",
)


class SandboxPool:
    """Runs many programs in parallel on a bounded pool of threads, one subprocess each."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None, python: str | None = None,
                 hidden_paths: Sequence[str] = ()):
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.limits = limits or SandboxLimits()
        self.python = python
        self.hidden_paths = tuple(hidden_paths)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ia-sandbox")
        self._verified: SandboxResult | None = None
        self._verify_lock = threading.Lock()

    def verify(self, force: bool = False) -> SandboxResult:
        """The self-test: a trusted solution through run_tests under this pool's limits. Raises
        SandboxUnavailable unless it passes (nothing untrusted has run then); cached after the first
        pass unless `force`. Callers run it before the first untrusted program, and again when a run
        reports "error", to tell a broken sandbox (raise) from a program's doing (a failed run)."""
        with self._verify_lock:
            if self._verified is not None and not force:
                return self._verified
            result = _run_tests(*_SELF_TEST, self.limits, self.python, self.hidden_paths, reclaim=False, warm=False)
            with _warm_lock:
                _warmed[self.python or sandbox_python()] = time.monotonic()
            if not result.passed:
                raise SandboxUnavailable(f"the code sandbox failed its self-test ({result.status}: {result.reason}); "
                                         f"isolation: {', '.join(result.isolation) or 'none'}")
            self._verified = result
            return result

    def map(self, sources: Sequence[str], limits: SandboxLimits | None = None) -> list[SandboxResult]:
        limits = limits or self.limits
        run = lambda s: _guarded(run_python, s, limits, python=self.python, hidden_paths=self.hidden_paths)
        return list(self._executor.map(run, sources))

    def map_tests(self, cases: Sequence[tuple[str, str, str]], limits: SandboxLimits | None = None) -> list[SandboxResult]:
        """`run_tests` on each (solution, tests, entry_point)."""
        limits = limits or self.limits
        run = lambda c: _guarded(run_tests, *c, limits, python=self.python, hidden_paths=self.hidden_paths)
        return list(self._executor.map(run, cases))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _guarded(fn, *args, **kwargs) -> SandboxResult:
    """One run of a batch: an unexpected failure of the parent's side becomes that run's "error"
    result instead of losing the batch. SandboxUnavailable (the sandbox cannot run at all) passes."""
    try:
        return fn(*args, **kwargs)
    except SandboxUnavailable:
        raise
    except Exception as e:  # noqa: BLE001
        _log.warning("ia_train.sandbox: a run failed in the parent: %r", e)
        return SandboxResult("error", f"the sandbox failed in the parent: {type(e).__name__}: {e}"[:500], None, "", "", 0.0)


def run_many(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None):
    with SandboxPool(workers, limits) as pool:
        return pool.map(sources)


# ---------------------------------------------------------------------------------------- one run


def _warm_up(python: str, limits: SandboxLimits, hidden_paths) -> None:
    """The trusted warm-up run (see _SELF_TEST), once per interpreter every _WARM_SECONDS. Only
    speed depends on it: a failure is left for the run that follows to report."""
    with _warm_lock:
        last = _warmed.get(python)
        if last is not None and time.monotonic() - last < _WARM_SECONDS:
            return
        _warmed[python] = time.monotonic()
        try:
            _run_tests(*_SELF_TEST, limits, python, hidden_paths, reclaim=False, warm=False)
        except Exception:  # noqa: BLE001
            pass


def _execute(files, argv, limits, harness, hidden_paths, python, reclaim: bool = True, warm: bool = True):
    limits = limits or SandboxLimits()
    if warm:
        _warm_up(python, limits, hidden_paths)
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="ia_sandbox_")
    try:
        with UidSlot() if os.geteuid() == 0 else NoSlot() as slot:
            return _run_in(base, files, argv, limits, harness, hidden_paths, python, slot.uid, start, reclaim)
    finally:
        remove_tree(base)


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


def _run_in(base, files, argv, limits, harness, hidden_paths, python, uid, start, reclaim) -> SandboxResult:
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    # Without root, RLIMIT_NPROC counts all of the user's processes (the sandbox shares their uid):
    # allow those running now plus the program's own. Concurrent runs share that headroom; the
    # cgroup (where there is one) bounds the run itself.
    nproc = limits.max_processes if uid is not None else len(processes_of(os.getuid())) + limits.max_processes
    nonce = os.urandom(16).hex() if harness is not None else None
    fields = dict(
        work=work,
        uid=uid,
        nproc=nproc,
        limits=asdict(limits),
        argv=list(argv),
        env=_scrubbed_env(work),
        files=files,
        hide=sorted(set(private_paths()) | {os.path.realpath(p) for p in hidden_paths}),
        keep=interpreter_paths(python),
        deny=os.environ.get("IA_SANDBOX_DENY", ""),  # testing: namespaces to treat as unavailable
        seccomp_required=False,
        harness=dict(harness, nonce=nonce) if harness is not None else None,
    )
    out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
    group = create_cgroup(limits)
    status_r, status_w = os.pipe()
    proc = None
    try:
        spec = launcher.make_spec(**fields, cgroup_procs=group.procs if group else [],
                                  cgroup_tag=group.tag if group else "", status_fd=status_w)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, "--launch"],
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
            status_w = None
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
        wall = time.monotonic() - start
        oom = group.oom_killed() if group is not None else False
    finally:
        os.close(status_r)
        if status_w is not None:
            os.close(status_w)
        if proc is not None and proc.returncode is None:  # the parent's side failed mid-run
            _kill_group(proc.pid)
            proc.wait()
        if group is not None:
            group.release(reclaim=reclaim)
    report = parse_reports(raw)
    if Report.REFUSED in report:
        raise SandboxUnavailable(str(report[Report.REFUSED]))
    stdout, out_size = _read_capped(out_path, limits.output_chars)
    stderr, err_size = _read_capped(err_path, limits.output_chars)
    applied = report.get(Report.APPLIED) if isinstance(report.get(Report.APPLIED), list) else []
    missing = report.get(Report.MISSING) if isinstance(report.get(Report.MISSING), list) else []
    isolation = tuple(str(a) for a in applied)
    if isinstance(report.get(Report.PROCFS), str):
        isolation += (str(report[Report.PROCFS]),)
    isolation += tuple(f"missing: {m}" for m in missing)
    if group is None and applied:
        isolation += ("no cgroup: per-process limits only",)
    if missing:
        key = tuple(missing)
        if key not in _warned:  # once per kind of shortfall (every result lists it in `isolation`)
            _warned.add(key)
            _log.warning("ia_train.sandbox: running UNTRUSTED code without full isolation (require_isolation=False); missing: %s",
                         "; ".join(str(m) for m in missing))
    code = report.get(Report.RETURNCODE)
    code = code if type(code) is int else None
    status, reason = classify(report, timed_out, stderr, max(out_size, err_size), limits, oom)
    if harness is not None:
        status, reason = tests_verdict(status, reason, report.get(Report.PROOF), nonce, limits)
    return SandboxResult(status, reason, code, stdout, stderr, wall, isolation)


def _read_capped(path: str, chars: int) -> tuple[str, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read(chars * 4)
    text = data.decode("utf-8", errors="replace")
    if len(text) > chars or size > len(data):
        text = text[:chars] + f"\n...[truncated, {size} bytes in all]"
    return text, size


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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""Run untrusted generated programs (model-written code) in an isolated subprocess, and score code
against tests with a proof that the tests ran to their end. docs/sandbox.md has the threat model,
the layers, the attacks it is tested against and what remains.

- `run_python(source)` runs a program; "passed" means it exited with code 0. That is all a generic
  program can show, so it is NOT a reward signal for untrusted code: a program can always exit 0.
- `run_tests(solution, tests, entry_point)` scores a solution against trusted tests (HumanEval's
  `check(candidate)`). "passed" requires the harness's proof of completion; rewards use this.
- `SandboxPool` runs many in parallel; `SandboxPool.verify()` is the self-test a trainer runs before
  the first untrusted program (it raises SandboxUnavailable when the sandbox cannot run here).

The parts, by job:

- launcher.py: the one file run as a script (stdlib only): namespaces, the filesystem view, the
  seccomp filter, the pid namespace's init, the program's own session, limits, exec; it owns the
  spec's keys (`SPEC_KEYS`, `make_spec`) and the status report's (`Report`);
- harness.py, runner.py: run_tests' two programs inside the sandbox, read as text;
- the parent's side: uids.py (uid slots, reaping), cgroups.py (v1 and v2, page cache given back),
  filesystem.py (the interpreter, the hidden paths), verdict.py (reports to a status), api.py.
"""

from .api import SandboxPool, run_many, run_python, run_tests
from .filesystem import remove_tree, sandbox_python, world_executable
from .launcher import SPEC_KEYS, Report, install_seccomp, make_spec, seccomp_program
from .limits import STATUSES, SandboxLimits, SandboxResult, SandboxUnavailable
from .uids import processes_of
from .verdict import classify, parse_reports, read_verdict

__all__ = [
    "SPEC_KEYS",
    "STATUSES",
    "Report",
    "SandboxLimits",
    "SandboxPool",
    "SandboxResult",
    "SandboxUnavailable",
    "classify",
    "install_seccomp",
    "make_spec",
    "parse_reports",
    "processes_of",
    "read_verdict",
    "remove_tree",
    "run_many",
    "run_python",
    "run_tests",
    "sandbox_python",
    "seccomp_program",
    "world_executable",
]

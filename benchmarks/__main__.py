"""python -m benchmarks NAME [options]: run one suite; `all --quick` runs every suite's quick mode.

Suites are the modules benchmarks/NAME.py with a `main(argv)` function.
"""

from __future__ import annotations

import importlib
import sys

SUITES = ("logprobs", "advantages", "ppo", "linear_stats", "model", "loop", "long")
# Suites not in `all`: gpu-build compiles every GPU kernel for sm_80/sm_90 (a minute or more on two
# cores), so CI runs it as its own step (.ci/run) rather than inside the quick benchmark pass.
EXTRA_SUITES = ("gpu-build",)


def _usage() -> str:
    return f"usage: python -m benchmarks {{{','.join(SUITES + EXTRA_SUITES)},all}} [--quick] [--device D] [--json PATH]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        print("each suite takes --help for its own options")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    names = SUITES if name == "all" else (name,)
    status = 0
    for suite in names:
        if suite not in SUITES + EXTRA_SUITES:
            print(f"unknown suite {suite!r}; {_usage()}", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(f"benchmarks.{suite.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if name == "all" and exc.name == f"benchmarks.{suite.replace('-', '_')}":
                print(f"[{suite}] not available yet, skipped")
                continue
            raise
        print(f"\n=== {suite} ===")
        rc = module.main(list(rest))
        if isinstance(rc, int) and not isinstance(rc, bool) and rc:
            status = rc  # a suite that returns a nonzero int (a failed check) fails the run
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

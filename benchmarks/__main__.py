"""python -m benchmarks NAME [options]: run one suite; `all --quick` runs every suite's quick mode.

Suites are the modules benchmarks/NAME.py with a `main(argv)` function.
"""

from __future__ import annotations

import importlib
import sys

SUITES = ("logprobs", "advantages", "ppo")


def _usage() -> str:
    return f"usage: python -m benchmarks {{{','.join(SUITES)},all}} [--quick] [--device D] [--json PATH]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        print("each suite takes --help for its own options")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    names = SUITES if name == "all" else (name,)
    for suite in names:
        if suite not in SUITES:
            print(f"unknown suite {suite!r}; {_usage()}", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(f"benchmarks.{suite}")
        except ModuleNotFoundError as exc:
            if name == "all" and exc.name == f"benchmarks.{suite}":
                print(f"[{suite}] not available yet, skipped")
                continue
            raise
        print(f"\n=== {suite} ===")
        module.main(list(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`ia-train`: the command-line entry point. Configuration problems end the run before any work,
with one line on stderr that says what to change, and exit status 2."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"ia-train: error: {e}", file=sys.stderr)
        return 2
    from .train import run

    try:
        run(cfg)
    except KeyboardInterrupt:
        print("ia-train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

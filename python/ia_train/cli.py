"""`ia-train` (train, the default) and `ia-train eval` (evaluate only): the command-line entry point. Configuration problems end the run before any work,
with one line on stderr that says what to change, and exit status 2."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load_config

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # `ia-train eval ...`: evaluation only (eval_cli.py)
        from .eval_cli import parse, run_eval

        try:
            cfg, ks = parse(argv[1:])
        except ConfigError as e:
            print(f"ia-train eval: error: {e}", file=sys.stderr)
            return 2
        run_eval(cfg, ks)
        return 0
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

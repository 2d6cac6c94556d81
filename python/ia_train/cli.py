"""`ia-train` (train, the default), `ia-train eval` (evaluate only) and `ia-train study` (a grid of
runs reproducing the papers' trade-offs): the command-line entry point.

Configuration problems (a bad setting, a missing optional package, no usable checkpoint to resume)
end the run before any work, with one line on stderr that says what to change, and exit status 2.
A file that cannot be written mid-run (a full disk) or a run that diverges ends it with one line
naming the path or the step, and exit status 1; the last good checkpoint stays usable.
"""

from __future__ import annotations

import os
import sys


def _fail(prog: str, error: BaseException, code: int) -> int:
    rank = os.environ.get("RANK", "0")  # under a launcher every process reports; rank 0 unmarked
    where = "" if rank in ("", "0") else f" (rank {rank})"
    print(f"{prog}{where}: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None, hooks=None) -> int:
    """The command line; `hooks` (loop.Hooks) reach a training run (scripts and tests observe it).
    SIGTERM stops a command as Ctrl-C does: it unwinds, says how to continue, and exits 143 (130
    for Ctrl-C)."""
    from .runtime.signals import sigterm_interrupts

    argv = sys.argv[1:] if argv is None else list(argv)
    with sigterm_interrupts():
        return _main(argv, hooks)


def _main(argv: list[str], hooks) -> int:
    from .errors import ConfigError
    from .optional import MissingPackage
    from .runtime.checkpoint import CheckpointError
    from .runtime.files import RunFileError
    from .runtime.signals import exit_status

    if argv[:1] == ["study"]:  # `ia-train study ...`: a grid of runs (study/)
        from .study.cli import main as study_main

        try:
            return study_main(argv[1:])
        except ConfigError as e:
            return _fail("ia-train study", e, 2)
        except KeyboardInterrupt as e:
            print("ia-train study: interrupted (its runs were stopped); run the same command again to continue",
                  file=sys.stderr, flush=True)
            return exit_status(e)
    evaluating = argv[:1] == ["eval"]
    prog = "ia-train eval" if evaluating else "ia-train"
    try:
        if evaluating:  # `ia-train eval ...`: evaluation only (evaluation/cli.py)
            from .evaluation.cli import parse

            cfg, ks = parse(argv[1:])
        else:
            from .loop import training_config

            cfg = training_config(argv)
    except (ConfigError, MissingPackage) as e:
        return _fail(prog, e, 2)
    except KeyboardInterrupt as e:
        return exit_status(e)
    from .evaluation.cli import run_eval
    from .loop import TrainingDiverged, run

    try:
        if evaluating:
            run_eval(cfg, ks)
        else:
            run(cfg, hooks)
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted" + ("" if evaluating else "; continue with --resume"), file=sys.stderr, flush=True)
        return exit_status(e)
    except (ConfigError, MissingPackage, CheckpointError) as e:  # found once the model or data loads
        return _fail(prog, e, 2)
    except (RunFileError, TrainingDiverged) as e:
        return _fail(prog, e, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

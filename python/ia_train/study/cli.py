"""`ia-train study`: parse the command, run the grid, aggregate, write study.json, study.md and the
figures."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..config import AT_MOST as TRAIN_AT_MOST
from ..config import OneLineParser
from ..errors import ConfigError
from ..runtime.files import check_output_dir, write_json
from .aggregate import aggregate, run_record
from .grid import MODES, grid
from .report import plot_length, plot_objectives, table
from .runner import run_grid


def parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="ia-train study", description="the two papers' headline trade-offs (pass@k and majority "
                      "objectives; the length penalty's alpha), reproduced on the bundled model")
    p.add_argument("--quick", action="store_true",
                   help=f"one seed, {MODES['quick']['steps']} steps, alpha in {{0, 0.4}}, "
                        f"{MODES['quick']['eval_problems']} held-out problems x {MODES['quick']['eval_n']} samples")
    p.add_argument("--out", default=None, help="output directory (default: runs/study, or runs/study-quick with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: 1 quick, 3 full)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: 100)")
    p.add_argument("--eval-problems", type=int, default=None, help="held-out problems per run (default: 100 quick, 200 full)")
    p.add_argument("--eval-n", type=int, default=None, help="samples per held-out problem (default: 8 quick, 16 full)")
    p.add_argument("--grid", choices=("all", "objectives", "length"), default="all", help="which grid to run")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the number of CPU cores)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--rollout", choices=("hf", "builtin"), default=None, help="rollout engine of every run (default: ia-train's)")
    args = p.parse_args(argv)
    mode = dict(MODES["quick" if args.quick else "full"])
    for key in ("seeds", "steps", "eval_problems", "eval_n", "jobs", "threads"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
            if value > AT_MOST[key]:
                raise ConfigError(f"--{key.replace('_', '-')} {value} is more than ia-train study accepts "
                                  f"(at most {AT_MOST[key]})")
            if key in mode:
                mode[key] = value
    if mode["eval_n"] < 8:
        raise ConfigError(f"--eval-n {mode['eval_n']}: the curves go to k = 8, so it must be at least 8")
    cores = os.cpu_count() or 1
    args.jobs = args.jobs or cores
    args.threads = args.threads or max(1, cores // args.jobs)
    args.mode = mode
    out = args.out if args.out is not None else ("runs/study-quick" if args.quick else "runs/study")
    check_output_dir(out)
    args.out = Path(out)
    return args


# a study is a grid of ordinary runs: the same bounds as ia-train's settings, and a bound on seeds
AT_MOST = {"seeds": 1000, "steps": TRAIN_AT_MOST["steps"], "eval_problems": TRAIN_AT_MOST["eval_problems"],
           "eval_n": TRAIN_AT_MOST["eval_n"], "jobs": 1024, "threads": TRAIN_AT_MOST["threads"]}


def main(argv: list[str]) -> int:
    args = parse(argv)
    mode = args.mode
    specs = [s for s in grid(mode, list(range(mode["seeds"]))) if args.grid in ("all", s.grid)]
    extra = ["--rollout", args.rollout] if args.rollout else []
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"ia-train study: {len(specs)} runs ({'quick' if args.quick else 'full'}: {mode['seeds']} seed(s), "
          f"{mode['steps']} steps, {mode['eval_problems']} held-out problems x {mode['eval_n']} samples), "
          f"{args.jobs} at a time with {args.threads} thread(s) each, in {args.out}", flush=True)
    t0 = time.time()
    summaries, failures = run_grid(specs, args.out / "runs", args.jobs, args.threads, extra)
    rows = aggregate(specs, summaries)
    study = {"mode": "quick" if args.quick else "full", "settings": mode,
             "command": "ia-train study " + " ".join(argv), "wall_seconds": time.time() - t0,
             "failed": failures, "aggregates": rows,
             "runs": [run_record(s, summaries[s.name]) for s in specs if s.name in summaries]}
    write_json(args.out / "study.json", study)
    (args.out / "study.md").write_text(table(rows))
    plots = [p for p in (plot_objectives(rows, args.out / "objectives.png"), plot_length(rows, args.out / "length.png")) if p]
    print(table(rows))
    print(f"wrote {args.out / 'study.json'}, study.md, {', '.join(p.name for p in plots)} "
          f"in {study['wall_seconds'] / 60:.1f} min", flush=True)
    if failures:
        print(f"ia-train study: error: {len(failures)} of {len(specs)} runs failed ({', '.join(failures)}); "
              "the figures leave them out; fix the cause and run the same command again to finish them",
              file=sys.stderr)
        return 1
    return 0

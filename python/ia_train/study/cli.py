"""`ia-train study`: parse the command, run the grid, aggregate, write study.json, study.md and the
figures; or, with --report-only, rebuild study.md and the figures from an existing study.json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config import AT_MOST as TRAIN_AT_MOST
from ..config import OneLineParser
from ..errors import ConfigError
from ..runtime.files import check_output_dir, write_json
from .aggregate import aggregate, run_record
from .grid import ABLATION_ALPHA, MODES, grid
from .report import plot_length, plot_objectives, table
from .runner import run_grid


def parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="ia-train study", description="the two papers' effects (pass@k and majority "
                      "objectives against the mean objective; the length penalty's alpha family), on the bundled "
                      "model and task, over seeds")
    quick, full = MODES["quick"], MODES["full"]
    p.add_argument("--quick", action="store_true",
                   help=f"one seed, {quick['steps']} steps, alpha in {{0, 0.4}}, {quick['eval_problems']} held-out "
                        f"problems x {quick['eval_n']} samples (under 15 minutes on a 2-core CPU)")
    p.add_argument("--out", default=None, help="output directory (default: runs/study, or runs/study-quick with --quick)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per setting in both grids (default: {full['objective_seeds']} for the objectives, "
                        f"{full['length_seeds']} for the length grid; 1 with --quick)")
    p.add_argument("--objective-seeds", type=int, default=None, help="seeds per objective (overrides --seeds)")
    p.add_argument("--length-seeds", type=int, default=None, help="seeds per alpha (overrides --seeds)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default: {full['steps']}, "
                                                            f"{quick['steps']} with --quick)")
    p.add_argument("--eval-problems", type=int, default=None,
                   help=f"held-out problems per run (default: {full['eval_problems']}, {quick['eval_problems']} quick)")
    p.add_argument("--eval-n", type=int, default=None,
                   help=f"samples per held-out problem (default: {full['eval_n']}, {quick['eval_n']} quick)")
    p.add_argument("--grid", choices=("all", "objectives", "length", "whitening"), default="all",
                   help="which grid to run (whitening: the ablation alone; it pairs with the length grid's runs)")
    p.add_argument("--whitening-ablation", action=argparse.BooleanOptionalAction, default=None,
                   help=f"also run the length grid's alpha = {ABLATION_ALPHA:g} without whitening, for each of its "
                        "seeds, to measure how much of the length reduction is the whitening's (default: on in the "
                        "full study, off with --quick)")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the number of CPU cores)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--rollout", choices=("hf", "builtin"), default=None,
                   help=f"rollout engine of every run (default: {MODES['full']['rollout']}, ia-train's own decode loop, "
                        "1.7x faster than generate on the bundled model)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild study.md, the figures and study.json's aggregates from --out's study.json")
    args = p.parse_args(argv)
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.seeds is not None:
        args.objective_seeds = args.objective_seeds if args.objective_seeds is not None else args.seeds
        args.length_seeds = args.length_seeds if args.length_seeds is not None else args.seeds
    if args.rollout is not None:
        mode["rollout"] = args.rollout
    if args.whitening_ablation is not None:
        mode["whitening_ablation"] = args.whitening_ablation
    if mode["whitening_ablation"] and ABLATION_ALPHA not in mode["alphas"]:
        raise ConfigError(f"--whitening-ablation pairs its runs with the length grid's alpha = {ABLATION_ALPHA:g}, "
                          f"which --quick does not run (alpha in {{{', '.join(f'{a:g}' for a in mode['alphas'])}}})")
    if args.grid == "whitening" and not mode["whitening_ablation"]:
        raise ConfigError("--grid whitening runs the whitening ablation, which "
                          + ("--quick leaves out" if args.quick else "--no-whitening-ablation turns off"))
    for key in ("seeds", "objective_seeds", "length_seeds", "steps", "eval_problems", "eval_n", "jobs", "threads"):
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
    if args.report_only:
        if not (Path(out) / "study.json").is_file():
            raise ConfigError(f"--report-only: {Path(out) / 'study.json'} does not exist; give the --out of a study")
    else:
        check_output_dir(out)
    args.out = Path(out)
    return args


# a study is a grid of ordinary runs: the same bounds as ia-train's settings, and a bound on seeds
AT_MOST = {"seeds": 1000, "objective_seeds": 1000, "length_seeds": 1000, "steps": TRAIN_AT_MOST["steps"],
           "eval_problems": TRAIN_AT_MOST["eval_problems"], "eval_n": TRAIN_AT_MOST["eval_n"], "jobs": 1024,
           "threads": TRAIN_AT_MOST["threads"]}


def write_report(study: dict, out: Path) -> list[Path]:
    """study.md and the figures from study["aggregates"]; the paths written."""
    agg = study["aggregates"]
    header = (f"<!-- written by `{study.get('command', 'ia-train study')}` from study.json; rebuild with "
              f"`ia-train study --report-only --out {out}` -->\n\n")
    if study.get("complete") is False:
        header += (f"**Interim: {study.get('runs_finished', len(study.get('runs', [])))} of "
                   f"{study.get('runs_planned', '?')} runs finished.** The same `ia-train study` command "
                   "continues the rest; these tables change as seeds are added.\n\n")
    (out / "study.md").write_text(header + table(agg))
    return [p for p in (plot_objectives(agg, out / "objectives.png"), plot_length(agg, out / "length.png")) if p]


def estimate_full_seconds(records: list[dict], jobs: int) -> float | None:
    """The full study's wall time on this machine, from these runs' measured seconds per training step
    and per evaluated sample (the rest of a run: loading, two evaluations)."""
    measured = [r for r in records if r.get("step_seconds") and r.get("wall_seconds") and r.get("train_seconds")]
    if not measured:
        return None
    step = sum(r["step_seconds"] for r in measured) / len(measured)
    per_sample = sum((r["wall_seconds"] - r["train_seconds"]) / (r["problems"] * r["n"]) for r in measured) / len(measured)
    full = MODES["full"]
    runs = grid(full)
    total = sum(s.config["steps"] * step + per_sample * s.config["eval_problems"] * s.config["eval_n"] for s in runs)
    return total / max(1, jobs)


def report_only(args) -> int:
    path = args.out / "study.json"
    try:
        study = json.loads(path.read_text())
        records = study["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--report-only: {path} is not a study's output ({str(e).splitlines()[0][:120]})") from None
    study["aggregates"] = aggregate(records)
    write_json(path, study)
    plots = write_report(study, args.out)
    print(table(study["aggregates"]))
    print(f"rebuilt {args.out / 'study.md'}, {', '.join(p.name for p in plots)} and the aggregates in {path} "
          f"from its {len(records)} runs", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.report_only:
        return report_only(args)
    mode = args.mode
    specs = [s for s in grid(mode) if args.grid in ("all", s.grid)]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"ia-train study: {len(specs)} runs ({'quick' if args.quick else 'full'}: {mode['objective_seeds']} seed(s) "
          f"per objective, {mode['length_seeds']} per alpha, {mode['steps']} steps, {mode['eval_problems']} held-out "
          f"problems x {mode['eval_n']} samples, --rollout {mode['rollout']}), {args.jobs} at a time with "
          f"{args.threads} thread(s) each, "
          f"in {args.out}", flush=True)
    t0 = time.time()

    def write_study(summaries: dict, failures: dict) -> tuple[dict, list[Path]]:
        """study.json, study.md and the figures from the runs finished so far (each run's end rewrites
        them, so a study stopped after hours leaves a report of what it has); (study, the figures)."""
        records = [run_record(s, summaries[s.name]) for s in specs if s.name in summaries]
        study = {"mode": "quick" if args.quick else "full", "settings": mode,
                 "command": "ia-train study " + " ".join(argv), "wall_seconds": time.time() - t0,
                 "runs_planned": len(specs), "runs_finished": len(records),
                 "complete": len(records) == len(specs), "failed": dict(failures), "runs": records,
                 "aggregates": aggregate(records)}
        estimate = estimate_full_seconds(records, args.jobs)
        if estimate is not None:
            study["full_study_estimate_seconds"] = estimate
        write_json(args.out / "study.json", study)
        return study, write_report(study, args.out)

    summaries, failures = run_grid(specs, args.out / "runs", args.jobs, args.threads, [],
                                   on_finished=lambda done, failed: write_study(done, failed) if done else None)
    study, plots = write_study(summaries, failures)
    estimate = study.get("full_study_estimate_seconds")
    print(table(study["aggregates"]))
    print(f"wrote {args.out / 'study.json'}, study.md, {', '.join(p.name for p in plots)} "
          f"in {study['wall_seconds'] / 60:.1f} min", flush=True)
    if estimate is not None and args.quick:
        print(f"the full study (`ia-train study`, {len(grid(MODES['full']))} runs) would take about "
              f"{estimate / 3600:.1f} h here with {args.jobs} at a time (from these runs' measured step and "
              "evaluation times)", flush=True)
    if failures:
        print(f"ia-train study: error: {len(failures)} of {len(specs)} runs failed ({', '.join(failures)}); "
              "the figures leave them out; fix the cause and run the same command again to finish them",
              file=sys.stderr)
        return 1
    return 0

"""`ia-train study`: the two papers' headline trade-offs, reproduced on the bundled model.

    ia-train study --quick          # about 10 minutes on a 2-core CPU
    ia-train study                  # the full grid (results/study/ holds its output)

Two grids of ordinary `ia-train` runs, each in its own process and directory (`<out>/runs/<name>/`):

- objectives (Tang et al. 2025; PKPO): the mean reward (rloo), grpo, pass@k (passk, k = 4, n = 8)
  and majority vote (majority, k = n = 4, with 32 prompts per step so that every objective trains on
  the same 128 samples per step). Evaluated before and after at pass@j and maj@j, j = 1, 2, 4, 8
  (16 in the full study): the mean objective should gain most at j = 1, the pass@k objective at
  large j.
- length (Arora & Zanette 2025): rloo on length-penalised rewards, alpha in {0, 0.05, 0.1, 0.2, 0.4},
  with their recipe (each response's token mean, then the mean over responses; the k1 KL penalty
  against the initial model in the reward, beta = 0.001): accuracy against mean response tokens,
  one point per alpha.

Each setting runs for several seeds (the seed changes the training problems, the sampling and the
held-out problems). study.json lists every run (objective, k, n, alpha, seed, its before / after /
change summaries) and, per setting, the mean over seeds with a 95% interval from a two-level
bootstrap (seeds resampled, then held-out problems within each seed), so the interval covers both
training noise and evaluation noise. objectives.png and length.png plot them; study.md tabulates.

A run whose summary.json exists with the same settings is kept, so an interrupted study continues
where it stopped (`ia-train study` again with the same --out). A run that fails is reported with
its log and the study ends with status 1 after the others finish: no figure hides a missing run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.4)
# Arora & Zanette's recipe around the penalty (see configs/recipes/math500_length_alpha_*.yaml)
LENGTH_RECIPE = {"objective": "rloo", "aggregation": "seq-mean-token-mean", "kl_reward_coef": 0.001}
OBJECTIVES = (  # (label, settings): the same 128 samples per step for each
    ("rloo", {"objective": "rloo", "n": 8, "k": 4}),
    ("grpo", {"objective": "grpo", "n": 8, "k": 4}),
    ("passk (k=4)", {"objective": "passk", "n": 8, "k": 4}),
    ("majority (k=4)", {"objective": "majority", "n": 4, "k": 4, "prompts_per_step": 32}),
)
MODES = {  # what --quick and the full study run; the flags below override
    "quick": {"seeds": 1, "steps": 100, "eval_problems": 100, "eval_n": 8, "alphas": (0.0, 0.4)},
    "full": {"seeds": 3, "steps": 100, "eval_problems": 200, "eval_n": 16, "alphas": ALPHAS},
}


@dataclass(frozen=True)
class RunSpec:
    name: str  # directory name under <out>/runs
    grid: str  # "objectives" or "length"
    label: str  # the setting, as the plots and tables name it
    settings: tuple  # (flag name, value) pairs for ia-train

    @property
    def config(self) -> dict:
        return dict(self.settings)


def grid(mode: dict, seeds: list[int]) -> list[RunSpec]:
    common = {"steps": mode["steps"], "eval_problems": mode["eval_problems"], "eval_n": mode["eval_n"],
              "checkpoint_every": 0, "tensorboard": False}
    specs = []
    for seed in seeds:
        for alpha in mode["alphas"]:
            s = {**common, **LENGTH_RECIPE, "n": 8, "k": 4, "alpha": alpha, "seed": seed}
            specs.append(RunSpec(f"length-alpha{alpha:g}-seed{seed}", "length", f"alpha={alpha:g}",
                                 tuple(sorted(s.items()))))
        for label, settings in OBJECTIVES:
            s = {**common, **settings, "seed": seed}
            name = f"objective-{settings['objective']}-k{settings['k']}-n{settings['n']}-seed{seed}"
            specs.append(RunSpec(name, "objectives", label, tuple(sorted(s.items()))))
    return specs


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return out


# ------------------------------------------------------------------------------------------------
# running the grid


def finished_summary(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's summary.json when it finished with exactly these settings, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    saved = summary.get("config", {}) if isinstance(summary, dict) else {}
    if any(saved.get(key) != value for key, value in spec.settings) or "after" not in summary:
        return None
    return summary


def run_one(spec: RunSpec, runs_dir: Path, threads: int, extra: list[str]) -> tuple[RunSpec, dict | None, str]:
    """(spec, its summary or None, the log's tail when it failed). A directory left by an
    interrupted run of the study is started over."""
    run_dir = runs_dir / spec.name
    done = finished_summary(run_dir, spec)
    if done is not None:
        return spec, done, ""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ia_train", "--out", str(run_dir), "--threads", str(threads),
           *flags(spec.config), *extra]
    with open(run_dir / "log.txt", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = finished_summary(run_dir, spec)
    if rc != 0 or summary is None:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        return spec, None, f"exit status {rc}: " + " | ".join(tail)
    return spec, summary, ""


def run_grid(specs: list[RunSpec], runs_dir: Path, jobs: int, threads: int, extra: list[str],
             say=print) -> tuple[dict, dict]:
    """Runs every spec (jobs at a time); ({name: summary}, {name: why it failed})."""
    from tqdm.auto import tqdm

    summaries, failures = {}, {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(specs), desc="study", unit="run") as bar:
        futures = [pool.submit(run_one, spec, runs_dir, threads, extra) for spec in specs]
        for future in as_completed(futures):
            spec, summary, why = future.result()
            if summary is None:
                failures[spec.name] = why
                say(f"ia-train study: run {spec.name} failed ({why}); log: {runs_dir / spec.name / 'log.txt'}")
            else:
                summaries[spec.name] = summary
                a, c = summary["after"], summary["change"]
                bar.write(f"{spec.name:<40} pass@1 {a['pass@1']:.3f} ({c['pass@1']:+.3f})  "
                          f"mean tokens {a['mean_tokens']:.1f} ({c['mean_tokens']:+.1f})  "
                          f"{summary['wall_seconds']:.0f}s")
            bar.update(1)
    return summaries, failures


# ------------------------------------------------------------------------------------------------
# aggregation over seeds


def two_level_interval(per_seed: list[np.ndarray], *, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """95% interval of the mean over seeds of each seed's mean over problems: resample the seeds,
    then the problems within each drawn seed (a hierarchical bootstrap)."""
    rng = np.random.default_rng(seed)
    s = len(per_seed)
    # each draw of a seed gets its own resample of that seed's problems: draw resamples * s of them
    # per seed up front, and let draw (b, j) use the column b * s + j of the seed it picked
    boots = np.stack([x[rng.integers(0, x.size, size=(resamples * s, x.size))].mean(axis=1) for x in per_seed])
    picks = rng.integers(0, s, size=(resamples, s))
    means = boots[picks, np.arange(resamples * s).reshape(resamples, s)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def metric_names(summary: dict) -> list[str]:
    return [f"{m}@{j}" for m in ("pass", "maj") for j in summary["after"]["curve"]["ks"]] + ["mean_tokens"]


def aggregate(specs: list[RunSpec], summaries: dict) -> list[dict]:
    """Per setting: the mean over seeds of each metric before, after and its change, with intervals."""
    out = []
    for grid_name, label in dict.fromkeys((s.grid, s.label) for s in specs):
        group = [s for s in specs if (s.grid, s.label) == (grid_name, label) and s.name in summaries]
        if not group:
            continue
        runs = [summaries[s.name] for s in group]
        row = {"grid": grid_name, "label": label, "seeds": [s.config["seed"] for s in group],
               **{key: group[0].config[key] for key in ("objective", "n", "k")},
               "alpha": group[0].config.get("alpha", 0.0)}
        for when in ("before", "after", "change"):
            row[when] = {}
            for name in metric_names(runs[0]):
                if when == "change":
                    per_seed = [np.asarray(r["after"]["per_problem"][name]) - np.asarray(r["before"]["per_problem"][name])
                                for r in runs]
                else:
                    per_seed = [np.asarray(r[when]["per_problem"][name]) for r in runs]
                row[when][name] = float(np.mean([p.mean() for p in per_seed]))
                row[when][name + "_ci"] = list(two_level_interval(per_seed))
        out.append(row)
    return out


def run_record(spec: RunSpec, summary: dict) -> dict:
    """One run in study.json: its settings, and its before / after / change without per-problem values."""
    def strip(part: dict) -> dict:
        return {k: v for k, v in part.items() if k != "per_problem"}

    return {"name": spec.name, "grid": spec.grid, "label": spec.label, **spec.config,
            "before": strip(summary["before"]), "after": strip(summary["after"]), "change": summary["change"],
            "train_seconds": summary.get("train_seconds"), "wall_seconds": summary.get("wall_seconds")}


# ------------------------------------------------------------------------------------------------
# the table and the figures


def table(rows: list[dict]) -> str:
    lines = []
    obj = [r for r in rows if r["grid"] == "objectives"]
    if obj:
        ks = curve_ks_of(obj[0]["after"])
        lines += ["Objectives: change after training (mean over seeds [95% interval])", "",
                  "| objective | " + " | ".join(f"pass@{j}" for j in ks) + " | " + " | ".join(f"maj@{j}" for j in ks) + " |",
                  "|---|" + "---|" * (2 * len(ks))]
        for r in obj:
            cells = [_cell(r["change"], f"{m}@{j}") for m in ("pass", "maj") for j in ks]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    length = [r for r in rows if r["grid"] == "length"]
    if length:
        lines += ["Length penalty: after training (mean over seeds [95% interval])", "",
                  "| alpha | pass@1 | mean tokens | change in pass@1 | change in mean tokens |", "|---|---|---|---|---|"]
        for r in length:
            lines.append(f"| {r['alpha']:g} | {_cell(r['after'], 'pass@1')} | {_cell(r['after'], 'mean_tokens', 1)} | "
                         f"{_cell(r['change'], 'pass@1')} | {_cell(r['change'], 'mean_tokens', 1)} |")
        base = length[0]["before"]
        lines += ["", f"Base model (mean over the same seeds' held-out problems): pass@1 {_cell(base, 'pass@1')}, "
                      f"mean tokens {_cell(base, 'mean_tokens', 1)}"]
    return "\n".join(lines) + "\n"


def curve_ks_of(part: dict) -> list[int]:
    """The j of the pass@j entries of an aggregated before / after / change."""
    return sorted(int(name.split("@")[1]) for name in part if name.startswith("pass@") and not name.endswith("_ci"))


def _cell(part: dict, name: str, digits: int = 3) -> str:
    lo, hi = part[name + "_ci"]
    return f"{part[name]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _errors(part: dict, name: str) -> tuple[float, float]:
    return part[name] - part[name + "_ci"][0], part[name + "_ci"][1] - part[name]


def plot_objectives(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = [r for r in rows if r["grid"] == "objectives"]
    if not obj:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, r in enumerate(obj):
        ks = curve_ks_of(r["after"])
        shift = (i - (len(obj) - 1) / 2) * 0.03  # keep error bars apart on the log axis
        xs = [k * 2 ** shift for k in ks]
        for ax, when, metric in ((axes[0], "after", "pass"), (axes[1], "change", "pass"), (axes[2], "change", "maj")):
            names = [f"{metric}@{k}" for k in ks]
            err = np.array([_errors(r[when], n) for n in names]).T
            ax.errorbar(xs, [r[when][n] for n in names], yerr=err, marker="o", capsize=3, label=r["label"], color=f"C{i}")
    base = obj[0]["before"]
    ks = curve_ks_of(base)
    axes[0].plot(ks, [base[f"pass@{k}"] for k in ks], "k--", lw=1, label="before training")
    titles = ("pass@k after training", "change in pass@k", "change in maj@k")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.axhline(0, color="0.4", lw=1)
    axes[0].legend(fontsize=8)
    seeds = len(obj[0]["seeds"])
    fig.suptitle(f"Objectives on held-out problems (mean over {seeds} seed{'s' if seeds > 1 else ''}, 95% intervals)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_length(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = [r for r in rows if r["grid"] == "length"]
    if not length:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    base = length[0]["before"]
    ax.errorbar([base["mean_tokens"]], [base["pass@1"]], xerr=np.array([_errors(base, "mean_tokens")]).T,
                yerr=np.array([_errors(base, "pass@1")]).T, marker="s", color="k", capsize=3, ls="none",
                label="before training")
    for i, r in enumerate(length):
        a = r["after"]
        ax.errorbar([a["mean_tokens"]], [a["pass@1"]], xerr=np.array([_errors(a, "mean_tokens")]).T,
                    yerr=np.array([_errors(a, "pass@1")]).T, marker="o", capsize=3, ls="none", color=f"C{i}",
                    label=f"alpha = {r['alpha']:g}")
    ax.set_xlabel("mean response tokens (held-out problems)")
    ax.set_ylabel("pass@1 (held-out problems)")
    seeds = len(length[0]["seeds"])
    ax.set_title(f"Length penalty: accuracy vs tokens (mean over {seeds} seed{'s' if seeds > 1 else ''}, 95% intervals)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# the command


def parse(argv: list[str]) -> argparse.Namespace:
    from .config import OneLineParser

    p = OneLineParser(prog="ia-train study", description=__doc__.split("\n\n")[0])
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
    for key in ("seeds", "steps", "eval_problems", "eval_n"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
            mode[key] = value
    if mode["eval_n"] < 8:
        raise ConfigError(f"--eval-n {mode['eval_n']}: the curves go to k = 8, so it must be at least 8")
    cores = os.cpu_count() or 1
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    args.jobs = args.jobs or cores
    args.threads = args.threads or max(1, cores // args.jobs)
    args.mode = mode
    args.out = Path(args.out or ("runs/study-quick" if args.quick else "runs/study"))
    return args


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
    from .files import write_json

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

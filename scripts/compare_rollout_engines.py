"""Does the rollout engine change what training learns? The default experiment (`ia-train` with no
other setting) with each engine, over several seeds, and the change in pass@1 / pass@k / maj@k /
mean tokens per engine with 95% t intervals over the seeds' means, plus the paired difference
(built-in - generate) on the same seeds and held-out problems.

    python scripts/compare_rollout_engines.py --seeds 3 --out results/engines

Each run is an ordinary ia-train run in its own process (ia_train.study.runner: a stopped comparison
continues where it stopped); two at a time with one thread each by default. Writes engines.json
(every run's summary change, the aggregates) and engines.md (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ia_train.evaluation.metrics import t_interval
from ia_train.runtime.files import write_json
from ia_train.study.grid import RunSpec
from ia_train.study.runner import run_grid

ENGINES = ("builtin", "hf")
METRICS = ("pass@1", "pass@k", "maj@k", "mean_tokens")


def specs(seeds: int) -> list[RunSpec]:
    return [RunSpec(f"{engine}-seed{seed}", "engines", engine,
                    (("rollout", engine), ("seed", seed), ("tensorboard", False), ("checkpoint_every", 0)))
            for seed in range(seeds) for engine in ENGINES]


def _over_seeds(values: list[float]) -> dict:
    """Per-seed values, their mean and the 95% t interval over seeds."""
    return {"per_seed": values, "mean": float(np.mean(values)), "ci": list(t_interval(values))}


def aggregate(runs: dict[str, dict], seeds: int) -> dict:
    def change(engine: str, seed: int, metric: str) -> float:
        return runs[f"{engine}-seed{seed}"]["change"][metric]

    out = {engine: {m: _over_seeds([change(engine, s, m) for s in range(seeds)]) for m in METRICS}
           for engine in ENGINES}
    out["builtin - hf"] = {m: _over_seeds([change("builtin", s, m) - change("hf", s, m) for s in range(seeds)])
                           for m in METRICS}
    return out


def table(agg: dict, k: int, seeds: int) -> str:
    names = [m.replace("@k", f"@{k}") for m in METRICS]
    lines = [f"Change after the default experiment, mean over {seeds} seeds [95% t interval over seeds]", "",
             "| engine | " + " | ".join(names) + " |", "|---|" + "---|" * len(METRICS)]
    for engine, row in agg.items():
        cells = []
        for m in METRICS:
            digits = 1 if m == "mean_tokens" else 3
            lo, hi = row[m]["ci"]
            cells.append(f"{row[m]['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/engines")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (an interval over seeds needs two)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    grid = specs(args.seeds)
    summaries, failures = run_grid(grid, out / "runs", args.jobs, args.threads, [])
    if failures:
        print(f"error: {len(failures)} runs failed: {failures}", file=sys.stderr)
        return 1
    agg = aggregate(summaries, args.seeds)
    k = next(iter(summaries.values()))["k"]
    result = {"seeds": args.seeds, "wall_seconds": time.time() - t0, "aggregates": agg,
              "runs": {name: {"change": s["change"], "before": {m: s["before"][m] for m in METRICS},
                              "after": {m: s["after"][m] for m in METRICS}, "train_seconds": s["train_seconds"]}
                       for name, s in summaries.items()}}
    write_json(out / "engines.json", result)
    (out / "engines.md").write_text(table(agg, k, args.seeds))
    print(table(agg, k, args.seeds))
    print(json.dumps({e: {m: round(agg[e][m]["mean"], 4) for m in METRICS} for e in agg}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

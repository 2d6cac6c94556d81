"""Aggregation over seeds: per setting, the mean of each metric before, after and its change, with
an interval over seeds and held-out problems."""

from __future__ import annotations

import numpy as np

from .grid import RunSpec


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

"""Aggregation over seeds, from the runs' records alone (study.json's "runs"), so that `--report-only`
can rebuild every table and figure from study.json.

The unit of replication is the seed (it sets the training problems, the sampling and the held-out
problems): per setting, each metric's mean over seeds of the per-seed value, with a 95% Student-t
interval over the seed values (evaluation.metrics.t_interval). A bootstrap over 3 seeds can draw
only 10 distinct seed sets and is far too narrow; the t interval is what a handful of independent
values supports. With one seed (--quick) there is nothing to vary over: the interval is then that
run's own bootstrap interval over its held-out problems (the "interval" field says which).

A t interval over a few seeds can run past a bounded metric's range (3 seeds of pick pass@32 at
0.575 / 0.875 / 0.925 give [0.321, 1.262]). The true value lies in the range, so the interval's
intersection with it covers it exactly as often: intervals are clipped to [0, 1] for pass@j / maj@j,
[-1, 1] for their changes and paired differences, and [0, inf) for mean tokens.

Paired comparisons: runs of one seed share their held-out problems, so the per-seed difference
after training between a setting and its grid's baseline (objectives: rloo; length: alpha = 0; the
whitening ablation: the length grid's run at the same alpha, whitened) removes both the problems' and
the seed's difficulty; its mean and t interval over the seeds both settings ran answer "does this
objective beat the mean objective at pass@j?" directly.
"""

from __future__ import annotations

import math

import numpy as np

from ..evaluation.metrics import t_interval
from .grid import BASELINES, RunSpec

PARTS = ("before", "after", "change")


def metric_names(part: dict) -> list[str]:
    """pass@j and maj@j in order of j, then mean_tokens (whatever the part holds)."""
    js = sorted(int(name.split("@")[1]) for name in part if name.startswith("pass@") and "_" not in name)
    return [f"{m}@{j}" for m in ("pass", "maj") for j in js if f"{m}@{j}" in part] + \
        (["mean_tokens"] if "mean_tokens" in part else [])


def _flat(part: dict, curve: dict) -> tuple[dict, dict]:
    """(values, intervals) of a summary's part: the curve's pass@j / maj@j and mean_tokens."""
    values, cis = {}, {}
    for name in [n for n in curve if n != "ks" and not n.endswith("_ci")]:
        values[name], cis[name] = curve[name], curve.get(name + "_ci")
    values["mean_tokens"], cis["mean_tokens"] = part["mean_tokens"], part.get("mean_tokens_ci")
    return values, cis


def _class_values(per_class: dict | None) -> dict | None:
    if not per_class:
        return None
    keep = lambda name: name == "mean_tokens" or name == "problems" or (  # noqa: E731
        "@" in name and name.split("@")[1].isdigit())
    return {c: {k: v for k, v in values.items() if keep(k)} for c, values in per_class.items()}


def run_record(spec: RunSpec, summary: dict) -> dict:
    """One run in study.json: its settings; per part (before, after, change) each metric's value and
    its bootstrap interval over the run's held-out problems; per class the same values (when the
    task has classes); and its times."""
    record = {"name": spec.name, "grid": spec.grid, "label": spec.label, **spec.config,
              "problems": summary["after"]["problems"], "n": summary["after"]["n"]}
    per_class = {}
    for part in PARTS:
        values, cis = _flat(summary[part], summary[part].get("curve", {}))
        record[part], record[part + "_ci"] = values, cis
        classes = _class_values(summary[part].get("per_class"))
        if classes is not None:
            per_class[part] = classes
    if per_class:
        record["per_class"] = per_class
    steps = spec.config.get("steps") or 0
    record.update(train_seconds=summary.get("train_seconds"), wall_seconds=summary.get("wall_seconds"),
                  step_seconds=(summary["train_seconds"] / steps) if steps and summary.get("train_seconds") else None)
    return record


def metric_range(name: str, difference: bool) -> tuple[float, float]:
    """The values metric `name` can take: a rate's in [0, 1] and a difference of rates in [-1, 1];
    mean tokens >= 0 (a difference of them unbounded)."""
    if "@" in name:
        return (-1.0, 1.0) if difference else (0.0, 1.0)
    return (-math.inf, math.inf) if difference else (0.0, math.inf)


def _interval(values: list[float], bounds: tuple[float, float]) -> list[float] | None:
    lo, hi = t_interval(values)
    return None if math.isnan(lo) else [max(lo, bounds[0]), min(hi, bounds[1])]


def _mean_and_interval(values: list[float], name: str, difference: bool,
                       one_seed_ci=None) -> tuple[float, list[float] | None]:
    """The mean of the per-seed values and their t interval clipped to the metric's range (one seed:
    that run's own interval, one_seed_ci, already in range)."""
    if len(values) == 1:
        return float(values[0]), (list(one_seed_ci) if one_seed_ci is not None else None)
    return float(np.mean(values)), _interval(values, metric_range(name, difference))


def _settings(records: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["grid"], r["label"]) for r in records))


def setting_rows(records: list[dict]) -> list[dict]:
    """Per setting (grid, label): seeds, settings, and per part each metric's mean over seeds with its
    interval ("<metric>_ci"), overall and per class."""
    rows = []
    for grid_name, label in _settings(records):
        runs = sorted((r for r in records if (r["grid"], r["label"]) == (grid_name, label)), key=lambda r: r["seed"])
        first = runs[0]
        row = {"grid": grid_name, "label": label, "seeds": [r["seed"] for r in runs],
               "interval": ("t over seeds, clipped to the metric's range" if len(runs) > 1
                            else "bootstrap over problems (one seed)"),
               **{key: first.get(key) for key in ("objective", "n", "k", "steps", "eval_problems", "eval_n")},
               "alpha": first.get("alpha", 0.0)}
        for part in PARTS:
            row[part] = {}
            for name in metric_names(first[part]):
                values = [r[part][name] for r in runs]
                ci = first.get(part + "_ci", {}).get(name)
                row[part][name], row[part][name + "_ci"] = _mean_and_interval(values, name, part == "change", ci)
        if all("per_class" in r for r in runs):
            row["per_class"] = {}
            for part in PARTS:
                classes = first["per_class"].get(part, {})
                row["per_class"][part] = {}
                for c in classes:
                    cell = {"problems": classes[c].get("problems")}
                    for name in metric_names(classes[c]):
                        values = [r["per_class"][part][c][name] for r in runs if c in r["per_class"].get(part, {})]
                        cell[name], cell[name + "_ci"] = _mean_and_interval(values, name, part == "change")
                    row["per_class"][part][c] = cell
        rows.append(row)
    return rows


def paired_rows(records: list[dict]) -> list[dict]:
    """Per setting other than its grid's baseline: the per-seed difference after training (setting -
    baseline, same seed, same held-out problems), its mean and t interval over the seeds both ran,
    overall and per class."""
    out = []
    for grid_name, label in _settings(records):
        if grid_name not in BASELINES or (grid_name, label) == BASELINES[grid_name]:
            continue
        base_grid, base_label = BASELINES[grid_name]
        mine = {r["seed"]: r for r in records if (r["grid"], r["label"]) == (grid_name, label)}
        base = {r["seed"]: r for r in records if (r["grid"], r["label"]) == (base_grid, base_label)}
        seeds = sorted(set(mine) & set(base))
        if not seeds:
            continue
        row = {"grid": grid_name, "label": label, "baseline": base_label, "seeds": seeds, "after": {}}
        for name in metric_names(mine[seeds[0]]["after"]):
            diffs = [mine[s]["after"][name] - base[s]["after"][name] for s in seeds]
            row["after"][name], row["after"][name + "_ci"] = _mean_and_interval(diffs, name, True)
        if all("per_class" in mine[s] and "per_class" in base[s] for s in seeds):
            row["per_class"] = {}
            for c, values in mine[seeds[0]]["per_class"]["after"].items():
                cell = {}
                for name in metric_names(values):
                    diffs = [mine[s]["per_class"]["after"][c][name] - base[s]["per_class"]["after"][c][name]
                             for s in seeds if c in base[s]["per_class"]["after"]]
                    cell[name], cell[name + "_ci"] = _mean_and_interval(diffs, name, True)
                row["per_class"][c] = cell
        out.append(row)
    return out


def aggregate(records: list[dict]) -> dict:
    """{"settings": setting_rows, "paired": paired_rows} of the runs' records."""
    return {"settings": setting_rows(records), "paired": paired_rows(records)}

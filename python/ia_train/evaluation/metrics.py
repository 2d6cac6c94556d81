"""The before/after report: pass@1, pass@k, maj@k and mean response tokens over held-out problems,
each with a confidence interval.

Per problem, from its n samples: pass@k is the unbiased Codex estimator (ia_kernels.pass_at_k) and
maj@k the exact expected correctness of a majority vote over k of the n samples, ties broken
uniformly (ia_kernels.maj_at_k). A response without a final answer (cut off, or with no answer
tag) casts no vote: the vote is among the answering responses of the k, and when none of them
answers the vote is wrong. Training's majority objective votes by the same rule (loop/step.py
passes the same answer ids to group_advantages). The report gives the mean over problems and a
95% percentile-bootstrap interval over problems (the problems are the sampling unit that varies
between evaluations).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import ia_kernels
import numpy as np
import torch

METRICS = ("pass@1", "pass@k", "maj@k", "mean_tokens")


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over problems."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


# Student's t quantile t_{0.975, df} for df = 1 .. 30 (tables); beyond, the Cornish-Fisher expansion
# around the normal quantile (error below 1e-4 from df = 30 on).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df = {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean of independent values (e.g. one per seed): what intervals
    over a few seeds need (a bootstrap over 3 seeds can draw only 10 distinct resamples and is far
    too narrow). NaN bounds for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return (float("nan"), float("nan"))
    half = t_quantile_975(x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return (float(x.mean() - half), float(x.mean() + half))


def answer_ids(answers: Sequence[Hashable | None]) -> torch.Tensor:
    """Int ids for voting: equal answers share an id (0, 1, ...); a missing answer (None) gets
    ia_kernels.NO_ANSWER (-1), which casts no vote."""
    table: dict = {}
    return torch.tensor([ia_kernels.NO_ANSWER if a is None else table.setdefault(a, len(table)) for a in answers],
                        dtype=torch.long)


def per_problem(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[Hashable | None]],
                lengths: Sequence[Sequence[int]], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-problem pass@j and maj@j for every j in ks, and mean tokens ([problems] arrays); n samples
    per problem."""
    n = len(correct[0])
    if any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same number of samples")
    flat_correct = torch.tensor([bool(v) for row in correct for v in row])
    flat_answers = answer_ids([a for row in answers for a in row])
    out = {"mean_tokens": np.array([float(np.mean(row)) for row in lengths])}
    for j in ks:
        out[f"pass@{j}"] = ia_kernels.group_pass_at_k(flat_correct, n, j).numpy()
        out[f"maj@{j}"] = ia_kernels.maj_at_k(flat_answers, flat_correct, n, j).numpy()
    return out


def curve_ks(n: int, k: int) -> list[int]:
    """The k of the pass@k / maj@k curves: the powers of two up to n, the run's k and n itself."""
    ks = {1 << i for i in range(n.bit_length()) if 1 << i <= n} | {min(k, n), n}
    return sorted(ks)


def by_class(per_problem: dict[str, Sequence[float]], classes: Sequence[str]) -> dict[str, dict]:
    """Per problem class (in order of first appearance): "problems", and the mean over the class's
    problems of every per-problem value."""
    out: dict[str, dict] = {}
    labels = np.asarray(classes, dtype=object)
    for c in dict.fromkeys(classes):
        pick = labels == c
        out[c] = {"problems": int(pick.sum()),
                  **{name: float(np.asarray(v, dtype=np.float64)[pick].mean()) for name, v in per_problem.items()}}
    return out


def summarize(correct, answers, lengths, k: int, *, seed: int = 0, classes: Sequence[str] | None = None) -> dict:
    """Means over problems under "pass@1", "pass@k", "maj@k", "mean_tokens", their 95% bootstrap
    intervals under "<name>_ci" ([lo, hi]), "k", "n", "problems", the per-problem values under
    "per_problem" (for paired comparisons), and under "curve" pass@j and maj@j (with "_ci") for
    every j of curve_ks(n, k) (their per-problem values join "per_problem"). With `classes` (each
    problem's class, e.g. Problem.meta["class"]): "classes" (that list, aligned with "per_problem")
    and "per_class" (by_class: every per-problem value's mean per class)."""
    n = len(correct[0])
    ks = curve_ks(n, k)
    values = per_problem(correct, answers, lengths, sorted(set(ks) | {k}))
    # the report's names for the run's k; every value is computed once, in per_problem
    named = {"pass@1": values["pass@1"], "pass@k": values[f"pass@{k}"], "maj@k": values[f"maj@{k}"],
             "mean_tokens": values["mean_tokens"]}
    out: dict = {}
    for name in METRICS:
        out[name] = float(named[name].mean())
        out[name + "_ci"] = list(bootstrap_ci(named[name], seed=seed))
    out.update(k=k, n=n, problems=len(correct))
    out["per_problem"] = {name: named[name].tolist() for name in METRICS}
    curve: dict = {"ks": ks}
    for j in ks:
        for metric in ("pass", "maj"):
            name = f"{metric}@{j}"
            curve[name] = float(values[name].mean())
            curve[name + "_ci"] = list(bootstrap_ci(values[name], seed=seed))
            out["per_problem"][name] = values[name].tolist()
    out["curve"] = curve
    if classes is not None:
        if len(classes) != len(correct):
            raise ValueError(f"classes has {len(classes)} entries for {len(correct)} problems")
        out["classes"] = [str(c) for c in classes]
        out["per_class"] = by_class(out["per_problem"], out["classes"])
    return out


def change(before: dict, after: dict, *, seed: int = 0) -> dict:
    """after - before on the same problems: the mean change of each metric and its 95% paired
    bootstrap interval (resampling problems, so problem difficulty cancels), under "<name>" and
    "<name>_ci"; the same for the curve's pass@j / maj@j under "curve" when both have them."""
    def paired(name: str) -> tuple[float, list[float]]:
        diff = np.asarray(after["per_problem"][name]) - np.asarray(before["per_problem"][name])
        return float(diff.mean()), list(bootstrap_ci(diff, seed=seed))

    out: dict = {}
    for name in METRICS:
        out[name], out[name + "_ci"] = paired(name)
    ks = [j for j in after.get("curve", {}).get("ks", []) if j in before.get("curve", {}).get("ks", [])]
    if ks:
        out["curve"] = {"ks": ks}
        for j in ks:
            for metric in ("pass", "maj"):
                name = f"{metric}@{j}"
                out["curve"][name], out["curve"][name + "_ci"] = paired(name)
    if before.get("classes") is not None and before.get("classes") == after.get("classes"):
        names = [name for name in after["per_problem"] if name in before["per_problem"]]
        diffs = {name: np.asarray(after["per_problem"][name]) - np.asarray(before["per_problem"][name])
                 for name in names}
        out["per_class"] = by_class(diffs, after["classes"])
    return out

"""Evaluation maths: unbiased pass@k and maj@k from n samples per problem, with confidence intervals.

pass@k (Chen et al. 2021, the Codex estimator): with c correct among n samples,
    pass@k = 1 - C(n - c, k) / C(n, k),
the probability that a uniformly random k-subset of the n samples holds a correct one.

maj@k: the probability that the majority answer of a uniformly random k-subset is correct, ties
between the most frequent answers broken uniformly at random (so a tie counts the fraction of the
tied answers that are correct). Responses without an answer never win a vote unless no response
has one, in which case the vote is wrong. Averaged exactly over all C(n, k) subsets when there are
at most `max_subsets` of them, else over that many random subsets (seeded).

Both are unbiased estimates of the model's pass@k / maj@k on the problem; the table reports the mean
over problems with a percentile-bootstrap interval over problems.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Hashable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (the numerically stable product form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _vote(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> float:
    """Expected correctness of the majority answer, ties broken uniformly at random."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [a for a, m in counts.items() if m == top]
    right = {a for a, ok in zip(answers, correct) if ok and a is not None}
    return sum(1.0 for a in winners if a in right) / len(winners)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int, *,
             max_subsets: int = 20000, seed: int = 0) -> float:
    """maj@k of one problem from its n sampled answers and their correctness (see module doc)."""
    n = len(answers)
    if len(correct) != n or not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs len(correct) == len(answers) and 1 <= k <= n, got n={n}, k={k}")
    if math.comb(n, k) <= max_subsets:
        subsets = itertools.combinations(range(n), k)
        total = math.comb(n, k)
    else:
        rng = random.Random(seed)
        subsets = (rng.sample(range(n), k) for _ in range(max_subsets))
        total = max_subsets
    acc = 0.0
    for idx in subsets:
        acc += _vote([answers[i] for i in idx], [correct[i] for i in idx])
    return acc / total


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


def summarize(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[Hashable | None]],
              lengths: Sequence[Sequence[int]], k: int, *, seed: int = 0) -> dict:
    """Per-problem estimates -> the means over problems under "pass@1", "pass@k", "maj@k",
    "mean_tokens", their 95% bootstrap intervals under "<name>_ci" ([lo, hi]), and "k", "n", "problems"."""
    n = len(correct[0])
    p1, pk, mk, toks = [], [], [], []
    for i, (ok, ans, ln) in enumerate(zip(correct, answers, lengths)):
        c = int(sum(bool(v) for v in ok))
        p1.append(pass_at_k(n, c, 1))
        pk.append(pass_at_k(n, c, k))
        mk.append(maj_at_k(list(ans), [bool(v) for v in ok], k, seed=seed + i))
        toks.append(float(np.mean(ln)))
    out = {}
    for name, vals in (("pass@1", p1), ("pass@k", pk), ("maj@k", mk), ("mean_tokens", toks)):
        out[name] = float(np.mean(vals))
        out[name + "_ci"] = list(bootstrap_ci(vals, seed=seed))
    out.update(k=k, n=n, problems=len(correct))
    return out

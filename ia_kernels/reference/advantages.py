"""Float64 references for the group-advantage estimators and the evaluation estimators.

Each group is handled by a plain Python loop straight from the definitions, in exact rational
arithmetic (fractions.Fraction) where combinatorics is involved, rounded to float64 once at the
end. Two kinds of reference:
  - closed forms with exact integer binomials (group_advantages, pass_at_k): any group size;
  - brute-force enumeration over k-subsets (passk_by_enumeration, passk_chen_by_enumeration,
    maj_at_k): the definitions themselves, for small groups (C(n, k) subsets each).
Majority votes: a sample whose answer id is NO_ANSWER (-1) casts no vote (see _majority_value).
Neither shares code with the kernels (csrc/include/ia/advantages.h) or the PyTorch backend.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction
from typing import Callable, Sequence

import torch


def _groups_of(groups, n: int) -> list[list[int]]:
    """Sample indices of each group: contiguous blocks for an int, ascending ids for a tensor."""
    if isinstance(groups, int):
        return [list(range(s, s + groups)) for s in range(0, n, groups)]
    ids = groups.tolist()
    out: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(g, []).append(i)
    return [out[g] for g in sorted(out)]


def _max(values) -> Fraction:
    values = list(values)
    return max(values) if values else Fraction(0)  # max of nothing is 0 (never used below k = 2)


# ---- passk, straight from PKPO's definitions (enumeration) ---------------------------------------

def _subset_mean_max_with(r: Sequence[Fraction], i: int, k: int, members: Sequence[int]) -> Fraction:
    """S(i, k, members) = (1/C(|members|, k)) * sum over k-subsets I of members containing i of max_I r."""
    total = Fraction(0)
    others = [j for j in members if j != i]
    for rest in itertools.combinations(others, k - 1):
        total += _max([r[i]] + [r[j] for j in rest])
    return total / math.comb(len(members), k)


def passk_by_enumeration(rewards: Sequence[float], k: int, variant: str = "loo-1") -> list[float]:
    """PKPO's per-sample values for one group by enumerating every k-subset (exact, then float).

    s_i           = S(i, k, [n]) = (1/C(n,k)) sum_{I ∋ i} max_I r
    "loo":   s_i - (1/(n-1)) sum_{j != i} S(j, k, [n] \\ {i})
    "loo-1": (1/C(n,k)) sum_{I ∋ i} (max_I r - max_{I \\ {i}} r)     (k >= 2)
             s_i - (1/n) mean_{j != i} r_j = (r_i - mean_{j != i} r_j) / n   (k = 1: PKPO's leave-one-out
             mean baseline, RLOO on the s scale; a group of one keeps s_i)
    "centred": loo-1 minus its group mean (Tang et al.'s centred form; biased)
    Rewards may be any real numbers.
    """
    r = [Fraction(x) for x in rewards]
    n = len(r)
    everyone = list(range(n))
    out = []
    for i in range(n):
        s_i = _subset_mean_max_with(r, i, k, everyone)
        if variant == "s":
            out.append(s_i)
        elif variant == "loo":
            rest = [j for j in everyone if j != i]
            out.append(s_i - sum(_subset_mean_max_with(r, j, k, rest) for j in rest) / (n - 1))
        elif variant in ("loo-1", "centred") and k == 1:
            rest = [r[j] for j in everyone if j != i]
            out.append(s_i - (sum(rest, Fraction(0)) / len(rest) / n if rest else 0))
        elif variant in ("loo-1", "centred"):
            total = Fraction(0)
            for others in itertools.combinations([j for j in everyone if j != i], k - 1):
                total += _max([r[i]] + [r[j] for j in others]) - _max(r[j] for j in others)
            out.append(total / math.comb(n, k))
        else:
            raise ValueError(f"unknown variant {variant!r}")
    if variant == "centred":
        mean = sum(out, Fraction(0)) / n
        out = [x - mean for x in out]
    return [float(x) for x in out]


def passk_chen_by_enumeration(rewards: Sequence[float], k: int, eps: float = 1e-6) -> list[float]:
    """Chen et al.'s bootstrap: every k-subset I is a 'group' with reward max_I r; the subset rewards
    are normalised by their mean and population std over all subsets; a sample's advantage is the
    mean normalised reward of the subsets that contain it."""
    n = len(rewards)
    subsets = list(itertools.combinations(range(n), k))
    R = {I: max(rewards[j] for j in I) for I in subsets}
    mean = sum(R.values()) / len(subsets)
    std = math.sqrt(sum((v - mean) ** 2 for v in R.values()) / len(subsets))
    scale = std + eps
    out = []
    for i in range(n):
        with_i = [I for I in subsets if i in I]
        out.append(0.0 if scale == 0 else sum((R[I] - mean) / scale for I in with_i) / len(with_i))
    return out


# ---- closed forms with exact binomials ---------------------------------------------------------

def unbiased_max_at_k(values: Sequence[Fraction], k: int) -> Fraction:
    """rho(g, k): the unbiased estimate of E[max of k] from the values (sorted ascending, the j-th
    order statistic, 1-based, is the max of C(j-1, k-1) of the C(n, k) subsets)."""
    if k < 1:
        return Fraction(0)
    g = sorted(values)
    return sum((math.comb(j - 1, k - 1) * g[j - 1] for j in range(1, len(g) + 1)), Fraction(0)) / math.comb(len(g), k)


def _passk_closed_form(r: list[Fraction], k: int, variant: str) -> list[Fraction]:
    n = len(r)
    order = sorted(range(n), key=lambda i: r[i])
    g = [r[i] for i in order]
    s_sorted = []
    for p in range(1, n + 1):  # 1-based sorted position
        above = sum((math.comb(j - 2, k - 2) * g[j - 1] for j in range(p + 1, n + 1)), Fraction(0)) if k >= 2 else 0
        s_sorted.append((math.comb(p - 1, k - 1) * g[p - 1] + above) / math.comb(n, k))
    s = [Fraction(0)] * n
    for p, i in enumerate(order):
        s[i] = s_sorted[p]
    if variant == "s":
        return s
    out = []
    for i in range(n):
        rest = r[:i] + r[i + 1:]
        if variant == "loo":
            out.append(s[i] - Fraction(k, n - 1) * unbiased_max_at_k(rest, k))
        elif k == 1:  # loo-1 / centred at k = 1: the leave-one-out mean, on the s scale
            out.append(s[i] - (Fraction(1, n) * unbiased_max_at_k(rest, 1) if rest else 0))
        else:
            out.append(s[i] - Fraction(k, n) * unbiased_max_at_k(rest, k - 1))
    if variant == "centred":
        mean = sum(out, Fraction(0)) / n
        out = [x - mean for x in out]
    return out


NO_ANSWER = -1  # the answer id of a sample without a final answer: it casts no vote


def _majority_value(answers: Sequence[int], rewards: Sequence[Fraction]) -> Fraction:
    """Reward of the most frequent answer among the samples that answer (answer id NO_ANSWER
    abstains); ties broken uniformly (mean over the tied answers); an answer's reward is the mean
    reward of its samples; 0 when no sample answers."""
    pairs = [(a, r) for a, r in zip(answers, rewards) if a != NO_ANSWER]
    answers, rewards = [a for a, _ in pairs], [r for _, r in pairs]
    if not answers:
        return Fraction(0)
    counts = Counter(answers)
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    reward_of = {a: sum((r for x, r in zip(answers, rewards) if x == a), Fraction(0)) / counts[a] for a in tied}
    return sum(reward_of.values(), Fraction(0)) / len(tied)


def leave_one_out(f: Callable[[list], Fraction], items: list) -> list:
    """Tang et al.'s estimator for any set function f: A_i = f(all) - f(all but i)."""
    whole = f(items)
    return [whole - f(items[:i] + items[i + 1:]) for i in range(len(items))]


def _one_group(r: list[Fraction], ans, estimator: str, k, eps: float, variant: str) -> list[float]:
    n = len(r)
    if estimator == "reinforce":
        return [float(x) for x in r]
    if estimator in ("rloo", "grpo", "dr_grpo") and n == 1:
        return [0.0]
    mean = sum(r, Fraction(0)) / n
    if estimator == "rloo":
        return [float(x - (n * mean - x) / (n - 1)) for x in r]
    if estimator == "dr_grpo":
        return [float(x - mean) for x in r]
    if estimator == "grpo":
        scale = math.sqrt(float(sum(((x - mean) ** 2 for x in r), Fraction(0)) / (n - 1))) + eps
        return [0.0 if scale == 0 else float(x - mean) / scale for x in r]
    if estimator == "passk":
        return [float(x) for x in _passk_closed_form(r, k, variant)]
    if estimator == "passk_chen":
        c = sum(1 for x in r if x != 0)
        rbar = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        miss = Fraction(math.comb(n - c - 1, k - 1), math.comb(n - 1, k - 1)) if c < n else Fraction(0)
        scale = math.sqrt(float(rbar * (1 - rbar))) + eps
        return [0.0 if scale == 0 else float((1 - rbar) if x != 0 else (1 - rbar - miss)) / scale for x in r]
    if estimator == "majority":
        pairs = list(zip(ans, r))
        f = lambda items: _majority_value([a for a, _ in items], [x for _, x in items])  # noqa: E731
        return [float(x) for x in leave_one_out(f, pairs)]
    raise ValueError(f"unknown estimator {estimator!r}")


def group_advantages(rewards: torch.Tensor, groups, *, estimator: str, k: int | None = None,
                     answers: torch.Tensor | None = None, eps: float = 1e-6, variant: str = "loo-1") -> torch.Tensor:
    """float64 [n] advantages, one Python loop iteration per group, exact arithmetic inside."""
    vals = [Fraction(float(x)) for x in rewards.double().tolist()]
    ans = None if answers is None else answers.tolist()
    out = [0.0] * len(vals)
    for idx in _groups_of(groups, len(vals)):
        kk = len(idx) if (estimator == "majority" and k is None) else k
        res = _one_group([vals[i] for i in idx], None if ans is None else [ans[i] for i in idx], estimator, kk,
                         eps, variant)
        for i, a in zip(idx, res):
            out[i] = a
    return torch.tensor(out, dtype=torch.float64)


def length_penalized_rewards(correct: torch.Tensor, lengths: torch.Tensor, groups, *, alpha: float) -> torch.Tensor:
    c = [bool(x) for x in correct.tolist()]
    L = [float(x) for x in lengths.tolist()]
    out = [0.0] * len(c)
    for idx in _groups_of(groups, len(c)):
        ok = [i for i in idx if c[i]]
        if not ok:
            continue
        mu = math.fsum(L[i] for i in ok) / len(ok)
        sd = math.sqrt(math.fsum((L[i] - mu) ** 2 for i in ok) / len(ok))
        for i in ok:
            out[i] = 1.0 - alpha / (1.0 + math.exp(-(L[i] - mu) / (sd + 1e-7)))
    return torch.tensor(out, dtype=torch.float64)


# ---- evaluation estimators -----------------------------------------------------------------------

def pass_at_k(num_correct: int, num_samples: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), exactly."""
    return float(1 - Fraction(math.comb(num_samples - num_correct, k), math.comb(num_samples, k)))


def maj_at_k(answers: Sequence[int], rewards: Sequence[float], k: int) -> float:
    """maj@k of one problem: the mean, over every k-subset of the n samples, of the reward of the
    subset's majority answer (ties broken uniformly). An answer's reward is the mean reward of all
    n samples that gave it (the same value whenever the reward is a function of the answer). A
    sample with answer NO_ANSWER casts no vote; a subset in which no sample answers scores 0.
    Enumerates C(n, k) subsets."""
    r = [Fraction(float(x)) for x in rewards]
    counts = Counter(a for a in answers if a != NO_ANSWER)
    reward_of = {a: sum((x for b, x in zip(answers, r) if b == a), Fraction(0)) / counts[a] for a in counts}
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(r)), k))
    for I in subsets:
        votes = Counter(answers[i] for i in I if answers[i] != NO_ANSWER)
        if not votes:
            continue  # nobody voted: the vote is wrong
        top = max(votes.values())
        tied = [a for a, c in votes.items() if c == top]
        total += sum((reward_of[a] for a in tied), Fraction(0)) / len(tied)
    return float(total / len(subsets))

"""Evaluation estimators from n samples per problem: unbiased pass@k and exact maj@k.

Both estimate what a user of the model gets with k samples, from n >= k samples per problem,
without the variance of drawing one k-subset: they average over every k-subset of the n samples.
They run once per evaluation, on per-problem counts, so they loop over problems in Python where an
exact combinatorial sum needs it (maj@k); pass@k is vectorised.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks
from ._groups import group_layout, padded_index, to_padded


def _as_int_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, bool):
        raise ValueError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.int64)
    _checks.require_int(name, x)
    return x.to(torch.int64)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    return k


def pass_at_k(num_correct, num_samples, k: int) -> torch.Tensor:
    """Unbiased pass@k (Chen et al. 2021, "Codex") for problems with n samples of which c are correct.

    pass@k = 1 - C(n-c, k) / C(n, k), the probability that a uniformly drawn k-subset of the n
    samples holds a correct one, computed in the numerically stable product form
    1 - prod_{i=n-c+1}^{n} (1 - k/i) (no large binomials), and 1 when n - c < k.

    Args:
        num_correct: c per problem, an int or an integer tensor.
        num_samples: n per problem, an int or an integer tensor broadcastable with num_correct.
        k: the number of attempts, 1 <= k <= n.

    Returns:
        float64 tensor of the broadcast shape (0-d for two ints). Average it over problems for the
        benchmark's pass@k. From per-sample correctness use group_pass_at_k.
    """
    c = _as_int_tensor("num_correct", num_correct)
    n = _as_int_tensor("num_samples", num_samples).to(c.device)
    k = _check_k(k)
    c, n = torch.broadcast_tensors(c, n)
    if c.numel():
        if bool((n < k).any()):
            raise ValueError(f"num_samples must be >= k={k} for every problem; smallest is {int(n.min())}")
        if bool(((c < 0) | (c > n)).any()):
            raise ValueError("num_correct must lie in [0, num_samples] for every problem")
    flat_c, flat_n = c.reshape(-1), n.reshape(-1)
    width = int(flat_c.max()) if flat_c.numel() else 0
    t = torch.arange(width, device=c.device)[None, :]
    i = (flat_n - flat_c + 1)[:, None] + t  # the factors' i = n-c+1 .. n
    factors = torch.where(t < flat_c[:, None], 1.0 - k / i.to(torch.float64), 1.0)
    miss = factors.prod(dim=1) if width else torch.ones(flat_c.shape, dtype=torch.float64, device=c.device)
    out = torch.where(flat_n - flat_c < k, 1.0, 1.0 - miss)
    return out.reshape(c.shape)


def _per_sample(name: str, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    _checks.require_tensor(name, x)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor [n] (one value per sample), got shape {tuple(x.shape)}")
    if n is not None and x.numel() != n:
        raise ValueError(f"{name} must have shape ({n},) (one value per sample), got {tuple(x.shape)}")
    return x


def _rewards64(name: str, correct: torch.Tensor) -> torch.Tensor:
    if correct.dtype == torch.bool or correct.dtype in _checks.INT_DTYPES:
        return correct.to(torch.float64)
    _checks.require_float(name, correct)
    r = correct.to(torch.float64)
    _checks.require_finite(name, r)
    return r


def group_pass_at_k(correct: torch.Tensor, groups, k: int) -> torch.Tensor:
    """pass_at_k from per-sample correctness: correct [n] (bool or 0/1), groups an int (group size,
    contiguous) or an integer tensor [n] of problem ids. Returns float64 [G], groups in ascending id
    order (contiguous blocks for an int)."""
    _per_sample("correct", correct)
    r = _rewards64("correct", correct)
    if bool(((r != 0) & (r != 1)).any()):
        raise ValueError("correct must hold only 0/1 (or be a bool tensor)")
    layout = group_layout(groups, r.numel(), r.device, what="samples")
    index = None if layout.fixed else padded_index(layout, r.device)
    c = to_padded(r, layout, 0.0, index).sum(1).round().to(torch.int64)
    return pass_at_k(c, layout.sizes().to(r.device), k)


def _maj_at_k_one(counts: list[int], rewards: list[float], k: int) -> float:
    """Exact maj@k for one problem whose n samples gave m distinct answers with these counts and
    rewards. Sums over the winning answer's vote count x and the number t of other answers tied
    with it (each tied answer wins with probability 1/(t+1)), by a dynamic programme over answers.

    For every x in 1..k at once (a batch of matrices), the state after some answers is the
    probability of having drawn J of the k votes so far with t other answers at exactly x votes and
    none above, in two copies: P0 (no winner chosen yet) and P1 (a winner chosen, weighted by its
    reward). Answer b adds y votes with the hypergeometric probability of drawing y of its c_b
    samples given J drawn so far from the pool of R samples still in play:
        H_b[J, y] = C(c_b, y) C(R - c_b, k - J - y) / C(R, k - J)      (exact integers, then float)
    y < x keeps (t, winner); y == x either joins the tie (t + 1) or becomes the winner (P0 -> P1,
    times its reward); y > x is dropped. maj@k = sum_{x, t} P1[x, J = k, t] / (t + 1).
    Cost: m steps of batched (k+1) x (k+1) matrix products over the k values of x.
    """
    n, m = sum(counts), len(counts)
    K1, T = k + 1, min(m, k) + 1
    D = np.arange(K1)[None, :] - np.arange(K1)[:, None]  # D[J, J'] = J' - J, the votes added
    xs = np.arange(1, k + 1)[:, None, None]
    low_mask = (D >= 0) & (D < xs)  # [k, K1, K1], one matrix per winning count x
    tie_mask = D == xs
    P0 = np.zeros((k, K1, T))
    P0[:, 0, 0] = 1.0
    P1 = np.zeros_like(P0)
    R = n
    for c_b, rho_b in zip(counts, rewards):
        H = np.zeros((K1, K1))  # H[J, J + y]
        for j in range(K1):
            need = k - j
            if need > R:
                continue
            total = math.comb(R, need)
            for y in range(min(c_b, need) + 1):
                ways = math.comb(c_b, y) * math.comb(R - c_b, need - y)
                if ways:
                    H[j, j + y] = ways / total  # int / int: correctly rounded
        low_t = np.swapaxes(H * low_mask, 1, 2)
        tie_t = np.swapaxes(H * tie_mask, 1, 2)
        tie0, tie1 = tie_t @ P0, tie_t @ P1
        P1 = low_t @ P1 + _shift_tie(tie1) + rho_b * tie0
        P0 = low_t @ P0 + _shift_tie(tie0)
        R -= c_b
    return float((P1[:, k, :] / np.arange(1, T + 1)).sum())


def _shift_tie(p: np.ndarray) -> np.ndarray:
    """t -> t + 1 along the last axis (one more answer tied at the winning count)."""
    out = np.zeros_like(p)
    out[..., 1:] = p[..., :-1]
    return out


def maj_at_k(answers: torch.Tensor, correct: torch.Tensor, groups, k: int) -> torch.Tensor:
    """Exact maj@k per problem: the expected reward of a majority vote over k samples drawn without
    replacement from the problem's n samples (ties broken uniformly at random).

    Args:
        answers: [n] integer answer ids (e.g. hashes of the normalised final answers).
        correct: [n] bool / 0-1 correctness, or float rewards. An answer's reward is the mean
            reward of the samples that gave it (its correctness, when correctness is a function of
            the answer).
        groups: an int (samples per problem, contiguous) or an integer tensor [n] of problem ids.
        k: votes per majority, 1 <= k <= every problem's n.

    Returns:
        float64 [G], problems in ascending id order (contiguous blocks for an int). Exact up to
        float64 rounding (a dynamic programme over the distinct answers, see _maj_at_k_one); maj@1
        is the mean reward and maj@n the vote over all n samples.
    """
    _per_sample("answers", answers)
    _checks.require_int("answers", answers)
    _per_sample("correct", correct, answers.numel())
    r = _rewards64("correct", correct).cpu()
    k = _check_k(k)
    layout = group_layout(groups, answers.numel(), answers.device, what="answers")
    if layout.n_groups and k > layout.min_size:
        raise ValueError(f"k={k} is larger than the smallest problem's {layout.min_size} samples")
    ans = answers.to(torch.int64).cpu()
    bounds = ([i * layout.group_size for i in range(layout.n_groups + 1)] if layout.fixed
              else layout.offsets.tolist())
    order = None if layout.order is None else layout.order.cpu()
    out = []
    for g in range(layout.n_groups):
        idx = torch.arange(bounds[g], bounds[g + 1]) if order is None else order[bounds[g]:bounds[g + 1]]
        uniq, inverse, counts = torch.unique(ans[idx], return_inverse=True, return_counts=True)
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, r[idx])
        out.append(_maj_at_k_one(counts.tolist(), (sums / counts).tolist(), k))
    return torch.tensor(out, dtype=torch.float64, device=answers.device)

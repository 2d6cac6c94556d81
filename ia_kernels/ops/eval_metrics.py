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

from ..core import checks as _checks
from ..core.groups import group_layout, padded_index, require_data, to_padded
from ..core.numerics import NO_ANSWER

_INT64_MAX = torch.iinfo(torch.int64).max


def _as_int_tensor(name: str, x) -> torch.Tensor:
    """int64, so that narrow dtypes (uint8, int8) cannot wrap when compared with Python ints."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(x, int):
        if not -_INT64_MAX - 1 <= x <= _INT64_MAX:
            raise ValueError(f"{name}={x} does not fit in int64")
        return torch.tensor(x, dtype=torch.int64)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be an int or an integer tensor, got {type(x).__name__}")
    _checks.require_int(name, x)
    require_data(name, x)
    return x.to(torch.int64)


def _check_k(k) -> int:
    k = _checks.require_index("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    return k


# Problems whose product has more factors than this use the log-gamma form (_log_miss_wide).
_PRODUCT_MAX_WIDTH = 1 << 16
# float64 elements per block of factors: bounds pass_at_k's memory whatever the counts.
_BLOCK_ELEMENTS = 1 << 22


def _miss_product(n: torch.Tensor, c: torch.Tensor, k: int, w: torch.Tensor) -> torch.Tensor:
    """C(n-c, k) / C(n, k) as a product of w = min(c, k) factors in [0, 1] (n - c >= k):
    prod_{j<k} (n-c-j)/(n-j) when k <= c, else prod_{j<c} (n-k-j)/(n-j) (the same ratio),
    multiplied block by block so that at most _BLOCK_ELEMENTS factors exist at once."""
    miss = torch.ones(n.shape, dtype=torch.float64, device=n.device)
    width = int(w.max()) if w.numel() else 0
    if width == 0:
        return miss
    block = min(width, 4096)
    rows = max(1, _BLOCK_ELEMENTS // block)
    other = torch.where(c >= k, c, torch.full_like(c, k))  # the subtrahend: n-c-j or n-k-j
    for r0 in range(0, n.numel(), rows):
        nr, orr, wr = n[r0:r0 + rows], other[r0:r0 + rows], w[r0:r0 + rows]
        acc = miss[r0:r0 + rows]
        for j0 in range(0, int(wr.max()), block):
            active = (wr > j0).nonzero().flatten()
            j = torch.arange(j0, min(j0 + block, width), device=n.device)[None, :]
            na, oa, wa = nr[active, None], orr[active, None], wr[active, None]
            f = torch.where(j < wa, (na - oa - j).to(torch.float64) / (na - j).to(torch.float64), 1.0)
            acc[active] = acc[active] * f.prod(dim=1)
    return miss


def _stirling_rest(y: torch.Tensor) -> torch.Tensor:
    """lgamma(y) - ((y - 1/2) log y - y + log(2 pi)/2) for y >= 1 (~1/(12 y))."""
    direct = torch.lgamma(y) - ((y - 0.5) * torch.log(y) - y + 0.5 * math.log(2 * math.pi))
    z = 1.0 / y.clamp_min(1.0)
    series = z * (1 / 12 - z * z * (1 / 360 - z * z * (1 / 1260 - z * z / 1680)))
    return torch.where(y >= 100, series, direct)  # series error < 1/(1188 y^9)


def _h(t: torch.Tensor) -> torch.Tensor:
    """(1 - t) log(1 - t) + t for 0 <= t < 1, without cancellation for small t."""
    series = torch.zeros_like(t)
    for m in range(40, 1, -1):  # t^2 sum_{m >= 2} t^(m-2) / (m (m-1)), Horner; t < 1/4: < 1e-25 left
        series = series * t + 1.0 / (m * (m - 1))
    direct = (1 - t) * torch.log1p(-t) + t
    return torch.where(t < 0.25, series * t * t, direct)


def _log_miss_wide(n: torch.Tensor, c: torch.Tensor, k: int) -> torch.Tensor:
    """log(C(n-c, k) / C(n, k)) = log((n-c)!/(n-c-k)!) - log(n!/(n-k)!), n - c >= k, float64.
    The m log y1 terms are combined as k log1p(-c/(n+1)); the rest are O(k^2/n) each."""
    n, c = n.to(torch.float64), c.to(torch.float64)
    kk = torch.full_like(n, float(k))
    a, b = n - c, n
    main = k * torch.log1p(-c / (n + 1.0))
    rest = (-(a + 1.0) * _h(kk / (a + 1.0)) + (b + 1.0) * _h(kk / (b + 1.0))
            + 0.5 * (torch.log1p(-kk / (a + 1.0)) - torch.log1p(-kk / (b + 1.0)))
            + _stirling_rest(a + 1.0) - _stirling_rest(a - kk + 1.0)
            - _stirling_rest(b + 1.0) + _stirling_rest(b - kk + 1.0))
    return main + rest


def pass_at_k(num_correct, num_samples, k: int) -> torch.Tensor:
    """Unbiased pass@k (Chen et al. 2021, "Codex") for problems with n samples of which c are correct.

    pass@k = 1 - C(n-c, k) / C(n, k), the probability that a uniformly drawn k-subset of the n
    samples holds a correct one, and 1 when n - c < k. The ratio is computed as an exact product of
    w = min(c, k) factors in [0, 1] (prod_{j<k} (n-c-j)/(n-j), or prod_{j<c} (n-k-j)/(n-j) when
    c < k; no large binomials; relative error at most ~w * 1.1e-16), block by block so that memory stays
    bounded (about 32 MiB of factors at a time) whatever n and c are. Problems with w > 65536
    instead use Stirling's series for the log-factorials with the large terms combined
    analytically (log1p forms): time independent of w, and an absolute error of ~1e-11 on the
    log of the ratio (so ~1e-11 relative on C(n-c, k)/C(n, k), far below 1e-9) for n up to 1e9.

    Args:
        num_correct: c per problem, an int or an integer tensor.
        num_samples: n per problem, an int or an integer tensor broadcastable with num_correct.
        k: the number of attempts, an int with 1 <= k <= n.

    Returns:
        float64 tensor of the broadcast shape (0-d for two ints). Average it over problems for the
        benchmark's pass@k. From per-sample correctness use group_pass_at_k.
    """
    c = _as_int_tensor("num_correct", num_correct)
    n = _as_int_tensor("num_samples", num_samples).to(c.device)
    k = _check_k(k)
    try:
        c, n = torch.broadcast_tensors(c, n)
    except RuntimeError:
        raise ValueError(f"num_samples (shape {tuple(n.shape)}) must broadcast with num_correct "
                         f"(shape {tuple(c.shape)})") from None
    if c.numel():
        if bool((n < k).any()):
            raise ValueError(f"num_samples must be >= k={k} for every problem; smallest is {int(n.min())}")
        if bool(((c < 0) | (c > n)).any()):
            raise ValueError("num_correct must lie in [0, num_samples] for every problem")
    flat_c, flat_n = c.reshape(-1), n.reshape(-1)
    some_miss = flat_n - flat_c >= k  # else every k-subset holds a correct sample: pass@k = 1
    w = torch.where(some_miss, torch.clamp(flat_c, max=k), 0)
    wide = w > _PRODUCT_MAX_WIDTH
    miss = _miss_product(flat_n, flat_c, k, torch.where(wide, 0, w))
    if bool(wide.any()):
        idx = wide.nonzero().flatten()
        miss[idx] = torch.exp(_log_miss_wide(flat_n[idx], flat_c[idx], k))
    out = torch.where(some_miss, 1.0 - miss, 1.0)
    return out.reshape(c.shape)


def _per_sample(name: str, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    _checks.require_tensor(name, x)
    require_data(name, x)
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
    k = _check_k(k)
    if layout.n_groups and k > layout.min_size:
        raise ValueError(f"k={k} is larger than the smallest problem's {layout.min_size} samples")
    index = None if layout.fixed else padded_index(layout, r.device)
    c = to_padded(r, layout, 0.0, index).sum(1).round().to(torch.int64)
    return pass_at_k(c, layout.sizes().to(r.device), k)


# maj@k's dynamic programme holds ~26 k (k+1)^2 + 48 k (k+1) T bytes at once (T = min(m, k) + 1
# for m distinct answers; measured: numpy's batched transition matrices, masks and state copies).
# Above 1 GiB maj_at_k refuses: the DP would also take minutes per problem (O(m k^3 T) flops), and
# ia_kernels targets maj@k for k in the tens to low hundreds (k <= 343 with one distinct answer,
# k <= 243 when every sample differs).
MAJ_AT_K_MAX_BYTES = 1 << 30


def _maj_dp_bytes(k: int, distinct: int) -> int:
    return 26 * k * (k + 1) ** 2 + 48 * k * (k + 1) * (min(distinct, k) + 1)


def _maj_at_k_one(counts: list[int], rewards: list[float], k: int, abstaining: int = 0) -> float:
    """Exact maj@k for one problem whose samples gave m distinct answers with these counts and
    rewards, and `abstaining` more samples without an answer (n = sum(counts) + abstaining). Sums
    over the winning answer's vote count x and the number t of other answers tied with it (each
    tied answer wins with probability 1/(t+1)), by a dynamic programme over answers.

    For every x in 1..k at once (a batch of matrices), the state after some answers is the
    probability of having drawn J of the k votes so far with t other answers at exactly x votes and
    none above, in two copies: P0 (no winner chosen yet) and P1 (a winner chosen, weighted by its
    reward). Answer b adds y votes with the hypergeometric probability of drawing y of its c_b
    samples given J drawn so far from the pool of R samples still in play:
        H_b[J, y] = C(c_b, y) C(R - c_b, k - J - y) / C(R, k - J)      (exact integers, then float)
    y < x keeps (t, winner); y == x either joins the tie (t + 1) or becomes the winner (P0 -> P1,
    times its reward); y > x is dropped. maj@k = sum_{x, t} P1[x, J = k, t] / (t + 1).
    The abstaining samples come first, as one block whose y draws (any number) change neither t
    nor the winner: they take places among the k drawn but cast no vote, and a draw with no
    answering sample has no winner (P1 stays 0: the vote is wrong).
    Cost: m steps of batched (k+1) x (k+1) matrix products over the k values of x.
    """
    if not counts:
        return 0.0  # nobody answers: every vote is wrong
    n, m = sum(counts) + abstaining, len(counts)
    K1, T = k + 1, min(m, k) + 1
    D = np.arange(K1)[None, :] - np.arange(K1)[:, None]  # D[J, J'] = J' - J, the votes added
    xs = np.arange(1, k + 1)[:, None, None]
    low_mask = (D >= 0) & (D < xs)  # [k, K1, K1], one matrix per winning count x
    tie_mask = D == xs
    P0 = np.zeros((k, K1, T))
    P0[:, 0, 0] = 1.0
    P1 = np.zeros_like(P0)
    R = n
    if abstaining:
        P0 = _draws(abstaining, R, k).T @ P0  # votes for nobody: (t, winner) unchanged
        R -= abstaining
    for c_b, rho_b in zip(counts, rewards):
        H = _draws(c_b, R, k)
        low_t = np.swapaxes(H * low_mask, 1, 2)
        tie_t = np.swapaxes(H * tie_mask, 1, 2)
        tie0, tie1 = tie_t @ P0, tie_t @ P1
        P1 = low_t @ P1 + _shift_tie(tie1) + rho_b * tie0
        P0 = low_t @ P0 + _shift_tie(tie0)
        R -= c_b
    return float((P1[:, k, :] / np.arange(1, T + 1)).sum())


def _draws(c_b: int, R: int, k: int) -> np.ndarray:
    """H[J, J + y]: the probability that the next block of c_b samples adds y to the J of k drawn so
    far, from the R samples still in play (hypergeometric; exact integers, then float)."""
    H = np.zeros((k + 1, k + 1))
    for j in range(k + 1):
        need = k - j
        if need > R:
            continue
        total = math.comb(R, need)
        for y in range(min(c_b, need) + 1):
            ways = math.comb(c_b, y) * math.comb(R - c_b, need - y)
            if ways:
                H[j, j + y] = ways / total  # int / int: correctly rounded
    return H


def _shift_tie(p: np.ndarray) -> np.ndarray:
    """t -> t + 1 along the last axis (one more answer tied at the winning count)."""
    out = np.zeros_like(p)
    out[..., 1:] = p[..., :-1]
    return out


def maj_at_k(answers: torch.Tensor, correct: torch.Tensor, groups, k: int) -> torch.Tensor:
    """Exact maj@k per problem: the expected reward of a majority vote over k samples drawn without
    replacement from the problem's n samples (ties broken uniformly at random).

    The vote: a sample without a final answer (answer id NO_ANSWER, -1) abstains: it casts no vote,
    and the vote is among the drawn samples that answer; when none of the k drawn answers, the vote
    is wrong (reward 0). So two samples without an answer never outvote one correct answer.

    Args:
        answers: [n] integer answer ids (e.g. hashes of the normalised final answers; Python's
            hash() never returns -1), NO_ANSWER (-1) for a sample without one.
        correct: [n] bool / 0-1 correctness, or float rewards. An answer's reward is the mean
            reward of the samples that gave it (its correctness, when correctness is a function of
            the answer); an abstaining sample's reward is not used.
        groups: an int (samples per problem, contiguous) or an integer tensor [n] of problem ids.
        k: votes per majority, 1 <= k <= every problem's n. The exact computation needs
            ~26 k^3 + 48 k^2 min(m, k) bytes for m distinct answers; above 1 GiB
            (MAJ_AT_K_MAX_BYTES: k above 343, or above 243 when all answers differ) it raises a
            ValueError naming k and the memory instead of running out of memory.

    Returns:
        float64 [G], problems in ascending id order (contiguous blocks for an int). Exact up to
        float64 rounding (a dynamic programme over the distinct answers, see _maj_at_k_one); maj@1
        is the mean reward (an abstaining sample counting 0) and maj@n the vote over all n samples.
    """
    _per_sample("answers", answers)
    _checks.require_int("answers", answers)
    _per_sample("correct", correct, answers.numel())
    _checks.require_same_device(answers=answers, correct=correct)
    r = _rewards64("correct", correct).cpu()
    k = _check_k(k)
    layout = group_layout(groups, answers.numel(), answers.device, what="answers")
    if layout.n_groups and k > layout.min_size:
        raise ValueError(f"k={k} is larger than the smallest problem's {layout.min_size} samples")
    if _maj_dp_bytes(k, 1) > MAJ_AT_K_MAX_BYTES:  # the bound for the fewest distinct answers
        raise ValueError(f"k={k} is too large for maj_at_k's exact dynamic programme: it needs about "
                         f"{_maj_dp_bytes(k, 1) / 2**30:.1f} GiB or more (limit "
                         f"{MAJ_AT_K_MAX_BYTES / 2**30:.0f} GiB, MAJ_AT_K_MAX_BYTES)")
    ans = answers.to(torch.int64).cpu()
    bounds = ([i * layout.group_size for i in range(layout.n_groups + 1)] if layout.fixed
              else layout.offsets.tolist())
    order = None if layout.order is None else layout.order.cpu()
    problems = []  # (counts, mean rewards) per problem, all checked before any DP runs
    for g in range(layout.n_groups):
        idx = torch.arange(bounds[g], bounds[g + 1]) if order is None else order[bounds[g]:bounds[g + 1]]
        votes = ans[idx] != NO_ANSWER
        abstaining = int((~votes).sum())
        idx = idx[votes]
        uniq, inverse, counts = torch.unique(ans[idx], return_inverse=True, return_counts=True)
        if _maj_dp_bytes(k, uniq.numel()) > MAJ_AT_K_MAX_BYTES:
            raise ValueError(f"k={k} is too large for maj_at_k's exact dynamic programme with {uniq.numel()} "
                             f"distinct answers (problem {g}): it needs about "
                             f"{_maj_dp_bytes(k, uniq.numel()) / 2**30:.1f} GiB (limit "
                             f"{MAJ_AT_K_MAX_BYTES / 2**30:.0f} GiB, MAJ_AT_K_MAX_BYTES)")
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, r[idx])
        problems.append((counts.tolist(), (sums / counts).tolist(), abstaining))
    out = [_maj_at_k_one(counts, rewards, k, abstaining) for counts, rewards, abstaining in problems]
    return torch.tensor(out, dtype=torch.float64, device=answers.device)

"""The ia_kernels functions the trainer calls, with plain-PyTorch stand-ins for any an older
ia_kernels lacks (`group_advantages`, `length_penalized_rewards`, `linear_ppo_loss`).

The stand-ins follow the definitions in DESIGN.md for fixed-size contiguous groups only, and are
only used when `ia_kernels` does not export the function; `SOURCES` records which one ran.
"""

from __future__ import annotations

import math

import ia_kernels
import torch

SOURCES: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# stand-ins


def _unbiased_max_at(sorted_r: list[float], m: int) -> float:
    """Unbiased estimate of E[max of m draws] from the ascending list `sorted_r` (size g)."""
    g = len(sorted_r)
    if m <= 0 or g < m:
        return 0.0
    return sum(math.comb(i, m - 1) * r for i, r in enumerate(sorted_r)) / math.comb(g, m)


def _s_values(r: list[float], k: int) -> list[float]:
    """PKPO's s_i: the mean of max over the k-subsets that hold sample i."""
    n = len(r)
    order = sorted(range(n), key=lambda i: r[i])
    rs = [r[i] for i in order]
    out = [0.0] * n
    for pos, i in enumerate(order):
        # i is the subset's max (k-1 others below it), or a higher j is (k-2 others below j, i among them)
        s = math.comb(pos, k - 1) * rs[pos]
        if k >= 2:
            s += sum(math.comb(j - 1, k - 2) * rs[j] for j in range(pos + 1, n))
        out[i] = s / math.comb(n, k)
    return out


def _passk_group(r: list[float], k: int) -> list[float]:
    n = len(r)
    if k == 1:  # the objective is the mean reward: leave-one-out baseline
        return [r[i] - (sum(r) - r[i]) / max(n - 1, 1) for i in range(n)]
    s = _s_values(r, k)
    return [s[i] - (k / n) * _unbiased_max_at(sorted(r[:i] + r[i + 1:]), k - 1) for i in range(n)]


def _majority_value(rows: list[tuple[int, float]]) -> float:
    counts: dict[int, int] = {}
    reward: dict[int, float] = {}
    for a, r in rows:
        counts[a] = counts.get(a, 0) + 1
        reward[a] = r
    top = max(counts.values())
    winners = [a for a, c in counts.items() if c == top]
    return sum(reward[a] for a in winners) / len(winners)


def fallback_group_advantages(rewards, groups, *, estimator, k=None, answers=None, eps=1e-6, backend=None):
    r = rewards.detach().to(torch.float64).reshape(-1, int(groups))
    G, n = r.shape
    if estimator == "reinforce":
        adv = r.clone()
    elif estimator in ("rloo", "dr_grpo", "grpo"):
        mean = r.mean(1, keepdim=True)
        if n == 1:
            adv = torch.zeros_like(r)
        elif estimator == "rloo":
            adv = r - (r.sum(1, keepdim=True) - r) / (n - 1)
        elif estimator == "dr_grpo":
            adv = r - mean
        else:
            adv = (r - mean) / (r.std(1, keepdim=True) + eps)
    elif estimator == "passk":
        adv = torch.tensor([_passk_group(row, int(k)) for row in r.tolist()], dtype=torch.float64)
    elif estimator == "passk_chen":
        s = torch.tensor([_s_values(row, int(k)) for row in r.tolist()], dtype=torch.float64)
        adv = (s - s.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)
    elif estimator == "majority":
        a = answers.reshape(G, n).tolist()
        rows = []
        for rr, aa in zip(r.tolist(), a):
            full = _majority_value(list(zip(aa, rr)))
            rows.append([full - _majority_value([x for j, x in enumerate(zip(aa, rr)) if j != i]) for i in range(n)])
        adv = torch.tensor(rows, dtype=torch.float64)
    else:
        raise ValueError(f"estimator {estimator!r} is unknown")
    return adv.reshape(-1).to(torch.float32)


def fallback_length_penalized_rewards(correct, lengths, groups, *, alpha, backend=None):
    c = correct.to(torch.float64).reshape(-1, int(groups))
    ln = lengths.to(torch.float64).reshape(-1, int(groups))
    ok = c > 0
    cnt = ok.sum(1, keepdim=True).clamp(min=1)
    mu = torch.where(ok, ln, 0).sum(1, keepdim=True) / cnt
    sd = (torch.where(ok, (ln - mu) ** 2, 0).sum(1, keepdim=True) / cnt).sqrt()
    r = torch.where(ok, 1 - alpha * torch.sigmoid((ln - mu) / (sd + 1e-7)), 0)
    return r.reshape(-1).to(torch.float32)


def _fallback_ppo_loss(logp, old_logp, advantages, mask=None, *, ref_logp=None, clip_low=0.2, clip_high=None,
                       kl_coef=0.0, backend=None, **_):
    clip_high = clip_low if clip_high is None else clip_high
    valid = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.bool()
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
    if kl_coef:
        d = (ref_logp - logp).clamp(-20, 20)
        pg = pg + kl_coef * (torch.exp(d) - d - 1)
    pg = torch.where(valid, pg, 0)
    loss = pg.sum() / valid.sum().clamp(min=1)
    clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)) & valid
    metrics = {"clip_fraction": clipped.sum() / valid.sum().clamp(min=1),
               "approx_kl": torch.where(valid, old_logp - logp, 0).sum().detach() / valid.sum().clamp(min=1)}
    return loss, metrics


def fallback_linear_ppo_loss(hidden, weight, targets, old_logp, advantages, mask=None, *, bias=None,
                             temperature=1.0, backend=None, **options):
    t = torch.where(mask.bool(), targets, -100) if mask is not None else targets
    logp = ia_kernels.linear_logprobs(hidden, weight, t, bias=bias, temperature=temperature, backend=backend)
    ppo = getattr(ia_kernels, "ppo_loss", None) or _fallback_ppo_loss
    return ppo(logp, old_logp, advantages, mask, backend=backend, **options)


# ---------------------------------------------------------------------------------------------
# what the trainer calls


def _pick(name: str, fallback):
    fn = getattr(ia_kernels, name, None)
    SOURCES[name] = "ia_kernels" if fn is not None else "ia_train stand-in"
    return fn if fn is not None else fallback


group_advantages = _pick("group_advantages", fallback_group_advantages)
length_penalized_rewards = _pick("length_penalized_rewards", fallback_length_penalized_rewards)
linear_ppo_loss = _pick("linear_ppo_loss", fallback_linear_ppo_loss)
linear_logprobs = ia_kernels.linear_logprobs

"""Group advantages: native kernel vs vectorised PyTorch vs a per-group Python loop.

100k groups of 8 and of 16 samples (one group per prompt), for the mean baselines (rloo, grpo),
PKPO pass@k (k = n/2, loo-1), Chen's pass@k and majority voting (n == k). Each candidate is the
public call `ik.group_advantages(..., backend=...)` including its input checks; the loop is what
RL libraries commonly ship: a Python loop over groups with a few tensor/numpy ops per group (as in
verl's GRPO advantage or PKPO's reference transform). The loop is timed on a subset of the groups
and extrapolated linearly to the full batch (marked `loop_extrapolated_from`).

Groups are given as a fixed size (contiguous) and, separately, as shuffled group ids (which adds
one stable argsort in the launcher).
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter

import numpy as np
import torch

import ia_kernels as ik

from .harness import add_common_args, report, time_fn

ESTIMATORS = ("rloo", "grpo", "passk", "passk_chen", "majority")


# ---- the per-group loops peers ship ----------------------------------------------------------------

def _loop_mean_baseline(rewards, n, estimator, eps=1e-6):
    out = torch.empty_like(rewards)
    for start in range(0, rewards.numel(), n):
        scores = rewards[start:start + n]
        if estimator == "rloo":
            out[start:start + n] = scores - (scores.sum() - scores) / (n - 1)
        else:
            out[start:start + n] = (scores - scores.mean()) / (scores.std() + eps)
    return out


def _loop_passk(rewards, n, k):
    """PKPO's loo-1 transform per group with numpy, as in reference implementations."""
    r_all = rewards.cpu().numpy().astype(np.float64)
    out = np.empty_like(r_all)
    total = math.comb(n, k)
    w = np.array([math.comb(j, k - 1) for j in range(n)], dtype=np.float64) / total
    u = np.array([math.comb(j - 1, k - 2) if j >= 1 and k >= 2 else 0 for j in range(n)], dtype=np.float64) / total
    m = k - 1
    v = (np.array([math.comb(j, m - 1) for j in range(n - 1)], dtype=np.float64) / math.comb(n - 1, m)) if m else None
    for start in range(0, r_all.size, n):
        r = r_all[start:start + n]
        order = np.argsort(r, kind="stable")
        g = r[order]
        ug = u * g
        s = w * g + (np.cumsum(ug[::-1])[::-1] - ug)
        if v is not None:
            vg = v * g[:-1]
            below = np.concatenate([[0.0], np.cumsum(vg)])
            vs = v * g[1:]
            above = np.concatenate([np.cumsum(vs[::-1])[::-1], [0.0]])
            s = s - (k / n) * (below + above)
        res = np.empty(n)
        res[order] = s
        out[start:start + n] = res
    return torch.from_numpy(out).to(rewards.device, rewards.dtype)


def _loop_passk_chen(rewards, n, k, eps=1e-6):
    out = torch.empty_like(rewards)
    for start in range(0, rewards.numel(), n):
        scores = rewards[start:start + n]
        c = int(scores.sum())
        rbar = 1 - math.comb(n - c, k) / math.comb(n, k)
        miss = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0.0
        sigma = math.sqrt(rbar * (1 - rbar)) + eps
        out[start:start + n] = torch.where(scores > 0, (1 - rbar) / sigma, (1 - rbar - miss) / sigma)
    return out


def _majority_value(answers, rewards):
    if not answers:
        return 0.0
    counts = Counter(answers)
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return sum(sum(r for x, r in zip(answers, rewards) if x == a) / counts[a] for a in tied) / len(tied)


def _loop_majority(rewards, answers, n):
    r_all, a_all = rewards.tolist(), answers.tolist()
    out = []
    for start in range(0, len(r_all), n):
        r, a = r_all[start:start + n], a_all[start:start + n]
        f = _majority_value(a, r)
        out += [f - _majority_value(a[:i] + a[i + 1:], r[:i] + r[i + 1:]) for i in range(n)]
    return torch.tensor(out, dtype=rewards.dtype, device=rewards.device)


def _loop(estimator, rewards, answers, n, k):
    if estimator in ("rloo", "grpo"):
        return _loop_mean_baseline(rewards, n, estimator)
    if estimator == "passk":
        return _loop_passk(rewards, n, k)
    if estimator == "passk_chen":
        return _loop_passk_chen(rewards, n, k)
    return _loop_majority(rewards, answers, n)


# ---- the suite --------------------------------------------------------------------------------------

def _inputs(estimator, n_groups, n, device, gen):
    N = n_groups * n
    if estimator == "passk_chen":
        rewards = (torch.rand(N, generator=gen) < 0.3).float()
    else:
        rewards = torch.rand(N, generator=gen)
    answers = torch.randint(0, 4, (N,), generator=gen) if estimator == "majority" else None
    k = {"passk": n // 2, "passk_chen": n // 2, "majority": n}.get(estimator)
    to = (lambda t: None if t is None else t.to(device))
    return to(rewards), to(answers), k


def _case(estimator, n_groups, n, device, repeats, loop_groups, native_backend, gen):
    rewards, answers, k = _inputs(estimator, n_groups, n, device, gen)
    kw = dict(estimator=estimator, k=None if estimator == "majority" else k, answers=answers)
    native = lambda: ik.group_advantages(rewards, n, backend=native_backend, **kw)  # noqa: E731
    vectorised = lambda: ik.group_advantages(rewards, n, backend="torch", **kw)  # noqa: E731
    t_native = time_fn(native, warmup=1, repeats=repeats, device=device)
    t_torch = time_fn(vectorised, warmup=1, repeats=repeats, device=device)
    # shuffled group ids: the launcher adds one stable argsort
    ids = torch.arange(n_groups, device=device).repeat_interleave(n)
    perm = torch.randperm(ids.numel(), generator=gen).to(device)
    ids_s, r_s = ids[perm], rewards[perm]
    a_s = None if answers is None else answers[perm]
    kw_s = dict(kw, answers=a_s)
    t_native_ids = time_fn(lambda: ik.group_advantages(r_s, ids_s, backend=native_backend, **kw_s), warmup=1,
                           repeats=repeats, device=device)
    t_torch_ids = time_fn(lambda: ik.group_advantages(r_s, ids_s, backend="torch", **kw_s), warmup=1,
                          repeats=repeats, device=device)
    # the loop on a subset, extrapolated
    sub = min(loop_groups, n_groups)
    r_sub = rewards[:sub * n]
    a_sub = None if answers is None else answers[:sub * n]
    t_loop = time_fn(lambda: _loop(estimator, r_sub, a_sub, n, k), warmup=0, repeats=max(1, repeats // 2),
                     device=device)
    loop_ms = t_loop["median_ms"] * n_groups / sub
    # the loop and the kernel agree (the loop is a fair stand-in, not a strawman)
    err = (_loop(estimator, r_sub, a_sub, n, k).double() - native()[:sub * n].double()).abs().max().item()
    return {
        "estimator": estimator, "groups": n_groups, "n": n, "k": k,
        "native_ms": t_native["median_ms"], "torch_ms": t_torch["median_ms"], "loop_ms": loop_ms,
        "loop_extrapolated_from": sub,
        "x_vs_torch": t_torch["median_ms"] / t_native["median_ms"],
        "x_vs_loop": loop_ms / t_native["median_ms"],
        "native_ids_ms": t_native_ids["median_ms"], "torch_ids_ms": t_torch_ids["median_ms"],
        "ids_x_vs_torch": t_torch_ids["median_ms"] / t_native_ids["median_ms"],
        "gb_per_s": (rewards.numel() * (2 * rewards.element_size() + (8 if answers is not None else 0)))
        / (t_native["median_ms"] * 1e6),
        "max_abs_diff_loop": err,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks advantages", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--groups", type=int, default=None, help="groups per batch (default 100000; quick 10000)")
    parser.add_argument("--loop-groups", type=int, default=None, help="groups the Python loop runs on before "
                        "extrapolating (default 2000; quick 300)")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--sizes", default="8,16")
    args = parser.parse_args(argv)
    device = args.device
    native_backend = "cuda" if torch.device(device).type == "cuda" else "cpu"
    n_groups = args.groups or (10_000 if args.quick else 100_000)
    loop_groups = args.loop_groups or (300 if args.quick else 2000)
    repeats = args.repeats or (3 if args.quick else 7)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for est in args.estimators.split(","):
            rows.append(_case(est, n_groups, n, device, repeats, loop_groups, native_backend, gen))
    cols = ["estimator", "groups", "n", "k", "native_ms", "torch_ms", "loop_ms", "loop_extrapolated_from", "x_vs_torch",
            "x_vs_loop", "native_ids_ms", "torch_ids_ms", "ids_x_vs_torch", "gb_per_s", "max_abs_diff_loop"]
    print(f"loop_ms: the per-group Python loop timed on loop_extrapolated_from groups and scaled to {n_groups}")
    # Other work on the machine distorts small multi-threaded timings (a woken thread waits for a
    # time slice): the load average goes in the record.
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at the end: {load}")
    report("advantages", rows, cols, device=device, json_path=args.json,
           extra={"native_backend": native_backend, "loop_note": "loop timed on a subset and extrapolated linearly",
                  "loadavg": load})
    return rows


if __name__ == "__main__":
    main()

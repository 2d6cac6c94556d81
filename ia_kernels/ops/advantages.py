"""group_advantages and length_penalized_rewards: per-group estimators for k-sample objectives.

Layers: per-group maths (csrc/include/ia/advantages.h, run by the OpenMP kernel in
csrc/cpu/advantages.cpp and the CUDA kernel in csrc/cuda/advantages.cu; vectorised PyTorch in
kernels/torch/advantages.py) -> launchers (kernels/<backend>/advantages.py: group layout in,
advantages out) -> public functions (validation, backend selection). No autograd: advantages are
constants of the policy loss.

Groups are an int (fixed size, contiguous) or a tensor of group ids in any order and sizes
(core/groups.py turns ids into CSR offsets over one stable sort). The native kernels check the
rewards as they read them (NaN/inf, passk_chen's {0, 1}), so the checks cost no
extra pass; the PyTorch path checks them with tensor ops. Either way a bad reward is a
ValueError naming the first offending sample.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .. import backends
from ..core import checks as _checks
from ..core.groups import GroupLayout, group_layout, label_ids, require_data, require_number
from ..core.numerics import (ESTIMATOR_CODES, ESTIMATORS_USING_K, FP32_FP64, NO_ANSWER, PASSK_VARIANT_CODES,
                             REWARD_NON_FINITE, REWARD_NOT_BINARY, REWARD_OUTSIDE_UNIT, compute_dtype)

ESTIMATORS = tuple(ESTIMATOR_CODES)
PASSK_VARIANTS = tuple(PASSK_VARIANT_CODES)
NAN_POLICIES = ("raise", "omit")


def group_ids(groups, n: int, device: torch.device, name: str = "groups"):
    """`groups` as the kernels take it: an int or an integer tensor, returned unchanged; a list, tuple
    or numpy array of labels (ints, strings such as verl's uid column, ...) becomes an int64 tensor
    of contiguous ids 0, 1, ... numbered in order of first appearance (the labels only say which
    samples share a group). Labels are compared by value: core.groups.label_ids has the rule."""
    if isinstance(groups, torch.Tensor) and groups.dim() == 0 and groups.dtype in _checks.INT_DTYPES:
        return _checks.require_index(name, groups)  # a group size given as a 0-d tensor
    if isinstance(groups, (torch.Tensor, numbers.Integral)) and not isinstance(groups, (bool, np.bool_)):
        return int(groups) if isinstance(groups, numbers.Integral) else groups
    if not isinstance(groups, (list, tuple, np.ndarray)):
        return groups  # group_layout names what is wrong with it
    return label_ids(groups, n, device, name)


def _per_sample_ids(groups, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(groups, int):
        return torch.arange(n, device=device) // groups
    return groups.to(device=device, dtype=torch.int64)


def _reward_error(code: int, index: int, rewards: torch.Tensor) -> ValueError:
    value = rewards[index].item()
    if code == REWARD_NON_FINITE:
        return ValueError(f"rewards must be finite: it has NaN or inf (first at index {index}: {value})")
    if code == REWARD_OUTSIDE_UNIT:
        return ValueError(f"rewards must lie in [0, 1] for estimator='passk' (the objective is the expected max "
                          f"of k rewards); found {value} at index {index}")
    return ValueError(f"rewards must be 0 or 1 for estimator='passk_chen' (binary rewards); "
                      f"found {value} at index {index}")


def _kernels() -> dict:
    # Every backend computes in float32 or float64 (half-precision rewards are widened exactly).
    return {b: backends.Impl(f"ia_kernels.kernels.{b}.advantages", FP32_FP64) for b in ("torch", "cpu", "cuda")}


_OP = backends.register("group_advantages", _kernels())
_LENGTH_OP = backends.register("length_penalized_rewards", _kernels())


# ---- validation ---------------------------------------------------------------------------------

def _require_1d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor [n] (one value per sample), got shape {tuple(x.shape)}")


def _check_k(k, estimator: str, variant: str, layout: GroupLayout) -> int:
    if estimator not in ESTIMATORS_USING_K:
        if k is not None:
            raise ValueError(f"k is only used by estimators {', '.join(ESTIMATORS_USING_K)}; estimator={estimator!r} "
                             f"takes no k (got k={k!r})")
        return 0
    if estimator == "majority":
        if layout.min_size != layout.max_size:
            raise ValueError(f"estimator='majority' needs every group to have k samples (n == k); group sizes "
                             f"range from {layout.min_size} to {layout.max_size}")
        if k is None:
            return layout.max_size
    if k is None:
        raise ValueError(f"estimator={estimator!r} needs k (the number of samples the objective uses)")
    k = _checks.require_index("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if layout.n_groups and k > layout.min_size:
        raise ValueError(f"k={k} is larger than the smallest group ({layout.min_size} samples): "
                         f"estimator={estimator!r} needs k <= n in every group")
    if estimator == "majority" and layout.n_groups and k != layout.max_size:
        raise ValueError(f"estimator='majority' needs k == the group size (n == k); got k={k} for groups "
                         f"of {layout.max_size}")
    if estimator == "passk" and variant == "loo" and layout.n_groups and k > layout.min_size - 1:
        raise ValueError(f"variant='loo' needs k < n in every group (its baseline uses k of the other n-1 "
                         f"samples); got k={k} and a group of {layout.min_size}: use variant='loo-1'")
    return k


def group_advantages(rewards: torch.Tensor, groups, *, estimator: str, k: int | None = None,
                     answers: torch.Tensor | None = None, eps: float = 1e-6, variant: str = "loo-1",
                     nan_policy: str = "raise", backend: str | None = None) -> torch.Tensor:
    """Per-sample advantages from per-group estimators (one group of samples per prompt).

    Args:
        rewards: [n] float rewards.
        groups: an int (the group size; the samples of a group are contiguous; a NumPy int or a
            0-d integer tensor too), an integer tensor [n] of group ids (any order, any group
            sizes, any integer values), or a list / tuple / numpy array of n hashable labels (ints,
            strings such as verl's uids, ...) compared by value: 0-d tensors and NumPy scalars as
            their Python value, so 1, 1.0, np.int64(1) and torch.tensor(1) are one group; a NaN
            label, an object compared by identity, a multi-element tensor or an unhashable label
            is a ValueError naming its index.
        estimator: one of
            "reinforce"  A_i = r_i;
            "rloo"       A_i = r_i - mean of the other rewards of the group;
            "grpo"       (r_i - mean) / (std + eps), std with Bessel's correction;
            "dr_grpo"    r_i - mean;
            "passk"      unbiased per-sample values for E[max of k rewards] (any real rewards):
                         PKPO (Walder & Karkhanis 2025); with n == k and the default variant this is
                         Tang et al.'s max(r) - max(r without i);
            "passk_chen" Chen et al. 2025's analytic pass@k advantages (binary rewards);
            "majority"   Tang et al.'s leave-one-out estimator for majority voting over the group's
                         answers (n == k): A_i = f(all) - f(all but i), f = the reward of the most
                         frequent answer, ties broken uniformly (f = mean reward over the tie).
                         A sample whose answer id is NO_ANSWER (-1) abstains: it casts no vote, so
                         f is the vote among the answering samples, 0 when none answers, and the
                         abstaining sample's advantage is 0 (f does not depend on it).
            Groups of one sample get A = 0 from rloo, grpo and dr_grpo.
        k: samples per objective evaluation: required by passk and passk_chen (1 <= k <= every
            group's size); optional for majority (must equal the group size).
        answers: [n] integer answer ids, for estimator="majority"; NO_ANSWER (-1) marks a sample
            without a final answer (it abstains from the vote; any other value is an answer).
        eps: added to the std by grpo and passk_chen.
        variant: passk's baseline (PKPO's definitions; see csrc/include/ia/advantages.h):
            "s" none; "loo" s_i - k/(n-1) * rho(r without i, k) (needs k < n);
            "loo-1" (default) s_i - (k/n) * rho(r without i, k-1), where rho(g, m) is the unbiased
            estimate of E[max of m] from the values g; at k = 1, PKPO's leave-one-out mean
            s_i - (1/n) * mean(r without i) = RLOO / n (the s scale of k > 1);
            "centred": loo-1 minus its group mean, Tang et al.'s centred form. BIASED: the group
            mean holds sample i's own advantage (in tests/test_advantages_unbiased.py its expected
            update is 8% off grad E[max of 4] in norm on continuous rewards, and 0.84x-1.43x of it,
            depending on the policy, on binary ones); offered to reproduce the paper.
        nan_policy: what a NaN reward means. "raise" (default): a ValueError naming the first one.
            "omit": a NaN reward is "no reward" (TRL's unscorable completion): the sample is left
            out of its group's statistics and gets advantage 0; the estimator runs on the group's
            scored samples as if they were the group (so grpo's mean and std are nan-aware, as
            TRL's). A group left with fewer scored samples than the estimator needs gets advantage
            0 on every sample: fewer than k for passk and passk_chen (no estimate of the k-sample
            objective exists from fewer than k samples), fewer than k + 1 for passk's
            variant="loo" (its baseline draws k of the other n - 1), any NaN in the group for
            majority (it needs all k). This is data, never an error, on every backend. inf, and
            a scored reward outside the estimator's domain, still raise, wherever they are (a
            group left out included), naming the index in the full batch.
        backend: "torch", "cpu" or "cuda"; None picks the fastest one verified on the device
            (backends.VERIFIED: "cpu" on CPU tensors, "torch" on CUDA tensors until the CUDA
            kernels have passed their tests on a GPU; backend="cuda" runs them regardless).

    Returns:
        [n] advantages, float64 for float64 rewards and float32 otherwise (computed in float64).
        Unbiasedness: E[sum_i A_i grad log pi(y_i)] is n * grad E[r] for reinforce and rloo,
        (n-1) * grad E[r] for dr_grpo (which is (n-1)/n times rloo), grad E[max of k rewards] for
        passk (every variant) and grad E[f] for majority. grpo and passk_chen divide by the
        group's std, which depends on every sample: biased (tests/test_advantages_unbiased.py).
    """
    _checks.require_float("rewards", rewards)
    require_data("rewards", rewards)
    _require_1d("rewards", rewards)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    if variant not in PASSK_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(PASSK_VARIANTS)}; got {variant!r}")
    eps = require_number("eps", eps)
    if not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if estimator == "majority":
        if answers is None:
            raise ValueError("estimator='majority' needs answers: an integer tensor [n] of answer ids, one per reward")
        _checks.require_int("answers", answers)
        require_data("answers", answers)
        _checks.require_shape("answers", answers, tuple(rewards.shape), "one answer id per reward")
        _checks.require_same_device(rewards=rewards, answers=answers)
    elif answers is not None:
        raise ValueError(f"answers is only used by estimator='majority' (got estimator={estimator!r})")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {', '.join(map(repr, NAN_POLICIES))}; got {nan_policy!r}")
    groups = group_ids(groups, rewards.numel(), rewards.device)
    layout = group_layout(groups, rewards.numel(), rewards.device)
    k = _check_k(k, estimator, variant, layout)
    if nan_policy == "omit":
        nan = torch.isnan(rewards)
        if bool(nan.any()):
            return _omit_nan(rewards, groups, nan, estimator=estimator, k=k, answers=answers, eps=eps,
                             variant=variant, backend=backend)
    _, kernels = _OP.select(rewards.device, compute_dtype(rewards.dtype), backend)
    # int64 first: a uint8 255 compares equal to -1 (torch wraps the scalar to the tensor's dtype)
    if estimator == "majority" and bool((answers.to(torch.int64) == NO_ANSWER).any()):
        return _majority_with_abstentions(kernels, rewards, answers, groups, k, variant, eps)
    out, (code, index) = kernels.group_advantages(rewards, answers, layout, estimator, k, variant, eps)
    if code:
        raise _reward_error(code, index, rewards)
    return out


def _majority_with_abstentions(kernels, rewards, answers, groups, k, variant, eps) -> torch.Tensor:
    """The majority estimator when some samples abstain (answer NO_ANSWER): f(set) is the vote among
    the set's answering samples, so A_i = f(all) - f(all but i) is 0 for an abstaining sample and,
    for an answering one, the estimator on its group's answering samples alone (groups of varying
    size, which every kernel takes: f(empty) = 0 gives a lone answerer its reward)."""
    bad = ~torch.isfinite(rewards)  # the kernels check what they read; abstainers are not read
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise _reward_error(REWARD_NON_FINITE, i, rewards)
    votes = answers.to(torch.int64) != NO_ANSWER
    out = torch.zeros(rewards.numel(), dtype=compute_dtype(rewards.dtype), device=rewards.device)
    if bool(votes.any()):
        ids = _per_sample_ids(groups, rewards.numel(), rewards.device)[votes]
        layout = group_layout(ids, ids.numel(), rewards.device)
        sub, (code, index) = kernels.group_advantages(rewards[votes], answers[votes], layout, "majority", k,
                                                      variant, eps)
        if code:  # unreachable after the check above; kept so that no kernel verdict is ignored
            raise _reward_error(code, int(votes.nonzero()[index, 0]), rewards)
        out[votes] = sub.to(out.dtype)
    return out


def _check_scored_rewards(rewards: torch.Tensor, nan: torch.Tensor, estimator: str) -> None:
    """Every reward that is not NaN must fit the estimator (finite; in [0, 1] for passk; 0 or 1 for
    passk_chen), checked over all of them with their own indices: the estimator later runs on the
    scored samples of the groups that keep enough of them, and would neither see an inf in a group
    left out nor name a bad reward by its index in the full batch."""
    r = rewards.to(torch.float64)
    codes = torch.where(torch.isinf(r), REWARD_NON_FINITE, 0)
    if estimator == "passk":
        codes = torch.where((codes == 0) & ~nan & ((r < 0) | (r > 1)), REWARD_OUTSIDE_UNIT, codes)
    elif estimator == "passk_chen":
        codes = torch.where((codes == 0) & ~nan & (r != 0) & (r != 1), REWARD_NOT_BINARY, codes)
    bad = codes.nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise _reward_error(int(codes[i]), i, rewards)


def _omit_nan(rewards, groups, nan, *, estimator, k, answers, eps, variant, backend) -> torch.Tensor:
    """group_advantages(nan_policy="omit") once NaN rewards are known to be present."""
    _check_scored_rewards(rewards, nan, estimator)
    n = rewards.numel()
    ids = _per_sample_ids(groups, n, rewards.device)
    keep = ~nan
    if estimator in ESTIMATORS_USING_K:
        # Groups with fewer scored samples than the estimator needs get 0 throughout: k (passk,
        # passk_chen), k + 1 (passk's "loo" baseline: k of the other n - 1), all of them (majority).
        _, inverse = torch.unique(ids, return_inverse=True)
        total = torch.bincount(inverse)
        scored = torch.bincount(inverse, weights=keep.to(torch.float64)).to(torch.int64)
        if estimator == "majority":
            enough = scored == total
        else:
            enough = scored >= (k + 1 if estimator == "passk" and variant == "loo" else k)
        keep = keep & enough[inverse]
    out_dtype = compute_dtype(rewards.dtype)
    out = torch.zeros(n, dtype=out_dtype, device=rewards.device)
    if bool(keep.any()):
        sub_k = k if estimator in ESTIMATORS_USING_K and estimator != "majority" else None
        out[keep] = group_advantages(rewards[keep], ids[keep], estimator=estimator, k=sub_k,
                                     answers=None if answers is None else answers[keep], eps=eps, variant=variant,
                                     backend=backend).to(out_dtype)
    return out


def length_penalized_rewards(correct: torch.Tensor, lengths: torch.Tensor, groups, *, alpha: float,
                             threshold: float | None = None, finished: torch.Tensor | None = None,
                             backend: str | None = None) -> torch.Tensor:
    """Arora & Zanette (2025)'s length-penalised rewards.

    A correct response gets r = 1 - alpha * sigmoid((len - mu) / (sd + 1e-7)), where mu and sd
    are the mean and population std of the lengths of the correct responses of the same prompt
    (group); an incorrect response gets 0. Shorter-than-average correct answers earn more. The
    paper then trains with RLOO: pass the result to group_advantages(..., estimator="rloo").
    With `finished`, a response cut off before its end of sequence scores 0 and is left out of
    its group's statistics, as in the paper's reference code (a correct answer truncated at the
    token limit would otherwise earn a reward and inflate the statistics of the long tail).

    Args:
        correct: [n] bool, or integer/float 0/1 values; with `threshold`, float rewards instead,
            a response being correct when its reward > threshold (NaN: not correct).
        lengths: [n] response lengths (tokens), integer or float, finite and >= 0 (a ValueError
            names the first bad index otherwise).
        groups: an int (group size, contiguous), an integer tensor [n] of group ids (any
            integer values, negative included), or a list / tuple / numpy array of n hashable labels,
            compared by value as in group_advantages.
        threshold: None (correct holds 0/1), or a real number: correct = rewards > threshold.
        finished: [n] bool (or 0/1): whether each response ended with an end-of-sequence token;
            None: every response did.
        alpha: the penalty's weight, a real number in [0, 1] (0: plain correctness; 1 keeps
            correct >= incorrect); bool, str and NaN are rejected.
        backend: "torch", "cpu" or "cuda"; None picks the fastest one verified on the device
            (backends.VERIFIED: "cpu" on CPU tensors, "torch" on CUDA tensors until the CUDA
            kernels have passed their tests on a GPU; backend="cuda" runs them regardless).

    Returns:
        [n] rewards, float64 when lengths is float64, else float32.
    """
    _checks.require_tensor("correct", correct)
    _checks.require_tensor("lengths", lengths)
    require_data("correct", correct)
    require_data("lengths", lengths)
    _require_1d("correct", correct)
    _checks.require_shape("lengths", lengths, tuple(correct.shape), "one length per element of correct")
    _checks.require_same_device(correct=correct, lengths=lengths)
    if lengths.dtype not in _checks.FLOAT_DTYPES + _checks.INT_DTYPES:
        raise ValueError(f"lengths must be an integer or floating-point tensor, got {lengths.dtype}")
    alpha = require_number("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:  # NaN fails too
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if threshold is not None:
        threshold = require_number("threshold", threshold)
        if threshold != threshold:
            raise ValueError("threshold must be a real number, got NaN")
        if correct.dtype == torch.bool:
            raise ValueError("with threshold, correct must hold the rewards (a float or integer tensor), not bools")
        if correct.dtype not in _checks.FLOAT_DTYPES + _checks.INT_DTYPES:
            raise ValueError(f"correct must be a float or integer tensor of rewards, got {correct.dtype}")
        correct = correct > threshold  # NaN > threshold is False: no reward is not correct
    if correct.dtype != torch.bool:
        if correct.dtype not in _checks.FLOAT_DTYPES + _checks.INT_DTYPES:
            raise ValueError(f"correct must be a bool, integer or float tensor, got {correct.dtype}")
        if correct.numel() and not bool(((correct == 0) | (correct == 1)).all()):
            raise ValueError("correct must hold only 0/1 (or be a bool tensor)")
        correct = correct != 0
    lengths64 = lengths.to(torch.float64).contiguous()  # what the kernels read: checked in this dtype
    bad = ~(torch.isfinite(lengths64) & (lengths64 >= 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"lengths must be finite and >= 0 (response lengths in tokens); found "
                         f"{lengths64[i].item()} at index {i}")
    if finished is not None:
        _checks.require_tensor("finished", finished)
        _checks.require_shape("finished", finished, tuple(correct.shape), "one flag per response")
        _checks.require_same_device(correct=correct, finished=finished)
        if finished.dtype != torch.bool:
            if finished.dtype not in _checks.INT_DTYPES + _checks.FLOAT_DTYPES or (
                    finished.numel() and not bool(((finished == 0) | (finished == 1)).all())):
                raise ValueError("finished must be a bool tensor (or hold only 0/1): True where the response "
                                 "ended with an end-of-sequence token")
            finished = finished != 0
        # An unfinished response is scored and counted exactly as an incorrect one: reward 0, and
        # out of the mean and std of its group's correct lengths. Every backend gets it from here.
        correct = correct & finished
    groups = group_ids(groups, correct.numel(), correct.device)
    layout = group_layout(groups, correct.numel(), correct.device, what="responses")
    dtype = compute_dtype(lengths.dtype)
    _, kernels = _LENGTH_OP.select(correct.device, dtype, backend)
    return kernels.length_penalized_rewards(correct, lengths64, layout, alpha, dtype)

"""group_advantages and length_penalized_rewards: per-group estimators for k-sample objectives.

Layers: per-group maths (csrc/include/ia/advantages.h, run by the OpenMP kernel in
csrc/cpu/advantages.cpp and the CUDA kernel in csrc/cuda/advantages.cu; vectorised PyTorch in
ops/_advantages_torch.py) -> launchers (`_cpu_*`, `_cuda_*`, `_torch_*` below: group layout in,
advantages out) -> public functions. No autograd: advantages are constants of the policy loss.

Groups are an int (fixed size, contiguous) or a tensor of group ids in any order and sizes
(ops/_groups.py turns ids into CSR offsets over one stable sort). The native kernels check the
rewards as they read them (NaN/inf, passk's [0, 1], passk_chen's {0, 1}), so the checks cost no
extra pass; the PyTorch path checks them with tensor ops. Either way a bad reward is a
ValueError naming the first offending sample.
"""

from __future__ import annotations

import torch

from .. import _native, backends
from . import _advantages_torch, _checks
from ._groups import GroupLayout, group_layout, require_data, require_number

ESTIMATORS = ("reinforce", "rloo", "grpo", "dr_grpo", "passk", "passk_chen", "majority")
PASSK_VARIANTS = ("s", "loo", "loo-1")
_ESTIMATOR_CODE = {name: i for i, name in enumerate(ESTIMATORS)}  # ia::adv::Estimator
_VARIANT_CODE = {name: i for i, name in enumerate(PASSK_VARIANTS)}  # ia::adv::PassKVariant
_USES_K = ("passk", "passk_chen", "majority")

# ia::adv::InputError codes -> what the rewards had to satisfy.
_NON_FINITE, _OUTSIDE_UNIT, _NOT_BINARY = 1, 2, 3


def _reward_error(code: int, index: int, rewards: torch.Tensor) -> ValueError:
    value = rewards[index].item()
    if code == _NON_FINITE:
        return ValueError(f"rewards must be finite: it has NaN or inf (first at index {index}: {value})")
    if code == _OUTSIDE_UNIT:
        return ValueError(f"rewards must lie in [0, 1] for estimator='passk' (the objective is the expected max "
                          f"of k rewards); found {value} at index {index}")
    return ValueError(f"rewards must be 0 or 1 for estimator='passk_chen' (binary rewards); "
                      f"found {value} at index {index}")


def _torch_reward_check(rewards: torch.Tensor, estimator: str) -> tuple[int, int]:
    """(code, first offending index) with the native kernels' semantics, or (0, -1)."""
    code = (~torch.isfinite(rewards)).to(torch.int8) * _NON_FINITE
    if estimator == "passk":
        code = torch.where((code == 0) & ((rewards < 0) | (rewards > 1)), _OUTSIDE_UNIT, code)
    elif estimator == "passk_chen":
        code = torch.where((code == 0) & (rewards != 0) & (rewards != 1), _NOT_BINARY, code)
    bad = code.nonzero()
    if bad.numel() == 0:
        return 0, -1
    i = int(bad[0, 0])
    return int(code[i]), i


def _out_dtype(rewards: torch.Tensor) -> torch.dtype:
    return torch.float64 if rewards.dtype == torch.float64 else torch.float32


def _kernel_rewards(rewards: torch.Tensor) -> torch.Tensor:
    # The kernels read float32 or float64; half types are widened once (exactly).
    return rewards.to(_out_dtype(rewards)).contiguous()


# ---- launchers: (rewards, answers, layout, estimator, k, variant, eps) -> (advantages, (code, index))

def _torch_group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    err = _torch_reward_check(rewards, estimator)
    if err[0]:
        return None, err
    out = _advantages_torch.group_advantages(rewards, answers, layout, estimator, k, variant, eps)
    return out.to(_out_dtype(rewards)), err


def _native_args(rewards, answers, layout: GroupLayout, estimator, k, variant, eps):
    r = _kernel_rewards(rewards)
    ans = None if answers is None else answers.to(torch.int64).contiguous()
    out = torch.empty_like(r)
    args = (_ESTIMATOR_CODE[estimator], _VARIANT_CODE[variant], r.dtype == torch.float64, r.data_ptr(),
            _native.ptr(ans), out.data_ptr(), layout.n_groups, layout.group_size, _native.ptr(layout.offsets),
            _native.ptr(layout.order))
    return r, ans, out, args


def _cpu_group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    r, ans, out, args = _native_args(rewards, answers, layout, estimator, k, variant, eps)
    code, index = _native.cpu_module().group_advantages(*args, layout.max_size, int(k), float(eps))
    return out, (code, index)


def _cuda_group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    r, ans, out, args = _native_args(rewards, answers, layout, estimator, k, variant, eps)
    n = r.numel() if estimator in ("passk", "majority") else 0  # the others need no scratch
    scratch = torch.empty(6 * n, dtype=torch.float64, device=r.device)
    idx = torch.empty(n, dtype=torch.int32, device=r.device)
    ans_scratch = torch.empty(n if ans is not None else 0, dtype=torch.int64, device=r.device)
    first_error = torch.full((1,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=r.device)
    _native.cuda_module().group_advantages(*args, _native.ptr(scratch), _native.ptr(idx), _native.ptr(ans_scratch),
                                           int(k), float(eps), first_error.data_ptr(), _native.stream_of(r))
    packed = int(first_error.item())  # the one host sync: the reward checks' verdict
    if packed == torch.iinfo(torch.int64).max:
        return out, (0, -1)
    return out, (packed % 4, packed // 4)


def _torch_length_penalized(correct, lengths, layout, alpha, dtype):
    return _advantages_torch.length_penalized_rewards(correct, lengths, layout, alpha).to(dtype)


def _native_length_args(correct, lengths, layout, dtype):
    out = torch.empty(lengths.shape, dtype=dtype, device=lengths.device)
    c = correct.contiguous()
    return c, out, (c.data_ptr(), lengths.data_ptr(), out.data_ptr(), dtype == torch.float64, layout.n_groups,
                    layout.group_size, _native.ptr(layout.offsets), _native.ptr(layout.order))


def _cpu_length_penalized(correct, lengths, layout, alpha, dtype):
    c, out, args = _native_length_args(correct, lengths, layout, dtype)
    _native.cpu_module().length_penalized_rewards(*args, layout.max_size, float(alpha))
    return out


def _cuda_length_penalized(correct, lengths, layout, alpha, dtype):
    c, out, args = _native_length_args(correct, lengths, layout, dtype)
    n = lengths.numel()
    scratch = torch.empty(2 * n, dtype=torch.float64, device=lengths.device)
    flags = torch.empty(n, dtype=torch.uint8, device=lengths.device)
    _native.cuda_module().length_penalized_rewards(*args, scratch.data_ptr(), flags.data_ptr(), float(alpha),
                                                   _native.stream_of(lengths))
    return out


_OP = backends.register("group_advantages", {
    "torch": _torch_group_advantages, "cpu": _cpu_group_advantages, "cuda": _cuda_group_advantages})
_LENGTH_OP = backends.register("length_penalized_rewards", {
    "torch": _torch_length_penalized, "cpu": _cpu_length_penalized, "cuda": _cuda_length_penalized})


# ---- validation ---------------------------------------------------------------------------------

def _require_1d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor [n] (one value per sample), got shape {tuple(x.shape)}")


def _check_k(k, estimator: str, variant: str, layout: GroupLayout) -> int:
    if estimator not in _USES_K:
        if k is not None:
            raise ValueError(f"k is only used by estimators {', '.join(_USES_K)}; estimator={estimator!r} "
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
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
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
                     backend: str | None = None) -> torch.Tensor:
    """Per-sample advantages from per-group estimators (one group of samples per prompt).

    Args:
        rewards: [n] float rewards.
        groups: an int (the group size; the samples of a group are contiguous) or an integer
            tensor [n] of group ids (any order, any group sizes, any integer values).
        estimator: one of
            "reinforce"  A_i = r_i;
            "rloo"       A_i = r_i - mean of the other rewards of the group;
            "grpo"       (r_i - mean) / (std + eps), std with Bessel's correction;
            "dr_grpo"    r_i - mean;
            "passk"      unbiased per-sample values for E[max of k rewards] (rewards in [0, 1]):
                         PKPO (Walder & Karkhanis 2025); with n == k and the default variant this is
                         Tang et al.'s max(r) - max(r without i);
            "passk_chen" Chen et al. 2025's analytic pass@k advantages (binary rewards);
            "majority"   Tang et al.'s leave-one-out estimator for majority voting over the group's
                         answers (n == k): A_i = f(all) - f(all but i), f = the reward of the most
                         frequent answer, ties broken uniformly (f = mean reward over the tie).
            Groups of one sample get A = 0 from rloo, grpo and dr_grpo.
        k: samples per objective evaluation: required by passk and passk_chen (1 <= k <= every
            group's size); optional for majority (must equal the group size).
        answers: [n] integer answer ids, for estimator="majority".
        eps: added to the std by grpo and passk_chen.
        variant: passk's baseline (PKPO's definitions; see csrc/include/ia/advantages.h):
            "s" none; "loo" s_i - k/(n-1) * rho(r without i, k) (needs k < n);
            "loo-1" (default) s_i - (k/n) * rho(r without i, k-1), where rho(g, m) is the unbiased
            estimate of E[max of m] from the values g.
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
    layout = group_layout(groups, rewards.numel(), rewards.device)
    k = _check_k(k, estimator, variant, layout)
    _, impl = _OP.select(rewards.device, backend)
    out, (code, index) = impl(rewards, answers, layout, estimator, k, variant, eps)
    if code:
        raise _reward_error(code, index, rewards)
    return out


def length_penalized_rewards(correct: torch.Tensor, lengths: torch.Tensor, groups, *, alpha: float,
                             backend: str | None = None) -> torch.Tensor:
    """Arora & Zanette (2025)'s length-penalised rewards.

    A correct response gets r = 1 - alpha * sigmoid((len - mu) / (sd + 1e-7)), where mu and sd
    are the mean and population std of the lengths of the correct responses of the same prompt
    (group); an incorrect response gets 0. Shorter-than-average correct answers earn more. The
    paper then trains with RLOO: pass the result to group_advantages(..., estimator="rloo").

    Args:
        correct: [n] bool, or integer/float 0/1 values.
        lengths: [n] response lengths (tokens), integer or float, finite and >= 0 (a ValueError
            names the first bad index otherwise).
        groups: an int (group size, contiguous) or an integer tensor [n] of group ids (any
            integer values, negative included).
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
    layout = group_layout(groups, correct.numel(), correct.device, what="responses")
    dtype = torch.float64 if lengths.dtype == torch.float64 else torch.float32
    _, impl = _LENGTH_OP.select(correct.device, backend)
    return impl(correct, lengths64, layout, alpha, dtype)

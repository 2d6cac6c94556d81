"""The cpu backend of group_advantages and length_penalized_rewards: ia_kernels._C's OpenMP kernels
(csrc/cpu/advantages.cpp, the maths in csrc/include/ia/advantages.h). The kernels check the rewards
as they read them (no extra pass) and report the first offending sample. Interface: see
kernels/torch/advantages.py.
"""

from __future__ import annotations

import torch

from ... import _native
from ...core.groups import GroupLayout
from ...core.numerics import ESTIMATOR_CODES, PASSK_VARIANT_CODES, compute_dtype


def native_args(rewards, answers, layout: GroupLayout, estimator, variant):
    """(rewards, answers, out, the keyword arguments shared by the CPU and CUDA kernels)."""
    r = rewards.to(compute_dtype(rewards.dtype)).contiguous()  # half types widened once (exactly)
    ans = None if answers is None else answers.to(torch.int64).contiguous()
    out = torch.empty_like(r)
    args = dict(estimator=ESTIMATOR_CODES[estimator], variant=PASSK_VARIANT_CODES[variant],
                is_double=r.dtype == torch.float64, rewards=r.data_ptr(), answers=_native.ptr(ans),
                out=out.data_ptr(), n_groups=layout.n_groups, group_size=layout.group_size,
                offsets=_native.ptr(layout.offsets), order=_native.ptr(layout.order))
    return r, ans, out, args


def native_length_args(correct, lengths, layout: GroupLayout, dtype):
    """(correct, out, the keyword arguments shared by the CPU and CUDA kernels)."""
    out = torch.empty(lengths.shape, dtype=dtype, device=lengths.device)
    c = correct.contiguous()
    return c, out, dict(correct=c.data_ptr(), lengths=lengths.data_ptr(), out=out.data_ptr(),
                        is_double=dtype == torch.float64, n_groups=layout.n_groups, group_size=layout.group_size,
                        offsets=_native.ptr(layout.offsets), order=_native.ptr(layout.order))


def group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    r, ans, out, args = native_args(rewards, answers, layout, estimator, variant)
    code, index = _native.cpu_module().group_advantages(**args, max_group_size=layout.max_size, k=int(k),
                                                        eps=float(eps))
    return (out if code == 0 else None), (code, index)


def length_penalized_rewards(correct, lengths, layout, alpha, dtype):
    c, out, args = native_length_args(correct, lengths, layout, dtype)
    _native.cpu_module().length_penalized_rewards(**args, max_group_size=layout.max_size, alpha=float(alpha))
    return out

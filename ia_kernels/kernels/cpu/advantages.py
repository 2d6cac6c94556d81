"""The cpu backend of group_advantages and length_penalized_rewards: ia_kernels._C's OpenMP kernels
(csrc/cpu/advantages.cpp, the maths in csrc/include/ia/advantages.h). The kernels check the rewards
as they read them (no extra pass) and report the first offending sample. Interface: see
kernels/torch/advantages.py.
"""

from __future__ import annotations

from ... import _native


def group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    r, ans, out, args = _native.advantage_args(rewards, answers, layout, estimator, variant)
    code, index = _native.cpu_module().group_advantages(**args, max_group_size=layout.max_size, k=int(k),
                                                        eps=float(eps))
    return (out if code == 0 else None), (code, index)


def length_penalized_rewards(correct, lengths, layout, alpha, dtype):
    c, out, args = _native.length_penalty_args(correct, lengths, layout, dtype)
    _native.cpu_module().length_penalized_rewards(**args, max_group_size=layout.max_size, alpha=float(alpha))
    return out

"""The cuda backend of group_advantages and length_penalized_rewards: ia_kernels._cuda's kernels
(csrc/cuda/advantages.cu: one warp per group), on the current stream. One host sync per call: the
reward checks' verdict. Interface: see kernels/torch/advantages.py.
"""

from __future__ import annotations

import torch

from ... import _native

_NO_ERROR = torch.iinfo(torch.int64).max


def group_advantages(rewards, answers, layout, estimator, k, variant, eps):
    r, ans, out, args = _native.advantage_args(rewards, answers, layout, estimator, variant)
    n = r.numel() if estimator in ("passk", "majority") else 0  # the others need no scratch
    scratch = torch.empty(6 * n, dtype=torch.float64, device=r.device)
    idx = torch.empty(n, dtype=torch.int32, device=r.device)
    ans_scratch = torch.empty(n if ans is not None else 0, dtype=torch.int64, device=r.device)
    first_error = torch.full((1,), _NO_ERROR, dtype=torch.int64, device=r.device)
    _native.cuda_module().group_advantages(
        **args, scratch=_native.ptr(scratch), idx_scratch=_native.ptr(idx), ans_scratch=_native.ptr(ans_scratch),
        k=int(k), eps=float(eps), first_error=first_error.data_ptr(), stream=_native.stream_of(r))
    packed = int(first_error.item())  # the one host sync
    if packed == _NO_ERROR:
        return out, (0, -1)
    return None, (packed % 4, packed // 4)


def length_penalized_rewards(correct, lengths, layout, alpha, dtype):
    c, out, args = _native.length_penalty_args(correct, lengths, layout, dtype)
    n = lengths.numel()
    scratch = torch.empty(2 * n, dtype=torch.float64, device=lengths.device)
    flags = torch.empty(n, dtype=torch.uint8, device=lengths.device)
    _native.cuda_module().length_penalized_rewards(**args, scratch=scratch.data_ptr(), flag_scratch=flags.data_ptr(),
                                                   alpha=float(alpha), stream=_native.stream_of(lengths))
    return out

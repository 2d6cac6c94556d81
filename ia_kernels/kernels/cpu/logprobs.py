"""The cpu backend of the log-prob row pass: ia_kernels._C's OpenMP kernels (csrc/cpu/logprobs.cpp).

The row passes are registered as torch custom ops (torch.ops.ia_kernels.logprob_rows_forward /
_backward) so that torch.compile sees an opaque, in-place op instead of breaking its graph at a
pybind11 call. The ops are public, and they hand raw pointers to native code: each validates its
arguments first (core.checks.row_pass_args, microseconds per chunk of logits). This module
registers their CPU kernels; kernels/cuda/logprobs.py registers the CUDA ones.
"""

from __future__ import annotations

import torch

from ... import _native
from ...core import checks


@torch.library.custom_op("ia_kernels::logprob_rows_forward", mutates_args=("logp", "lse", "entropy"),
                         device_types="cpu")
def _forward_op(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                logp: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor) -> None:
    checks.row_pass_args("logprob_rows_forward", z, targets, temperature, ignore_index,
                         logp=logp, lse=lse, entropy=entropy)
    _native.cpu_module().logprob_rows_forward(**forward_args(z, targets, temperature, ignore_index, logp, lse, entropy))


@torch.library.custom_op("ia_kernels::logprob_rows_backward", mutates_args=("z",), device_types="cpu")
def _backward_op(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                 lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor,
                 g_entropy: torch.Tensor | None) -> None:
    checks.row_pass_args("logprob_rows_backward", z, targets, temperature, ignore_index,
                         lse=lse, entropy=entropy, g_logp=g_logp, g_entropy=g_entropy)
    _native.cpu_module().logprob_rows_backward(
        **backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy))


def forward_args(z, targets, temperature, ignore_index, logp, lse, entropy) -> dict:
    """The native forward row pass's keyword arguments (the same for the CPU and CUDA modules)."""
    return dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                logp=logp.data_ptr(), lse=lse.data_ptr(), entropy=entropy.data_ptr())


def backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy) -> dict:
    """The native backward row pass's keyword arguments (the same for the CPU and CUDA modules)."""
    return dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                lse=lse.data_ptr(), entropy=entropy.data_ptr(), g_logp=g_logp.data_ptr(),
                g_entropy=_native.ptr(g_entropy))


def rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
    torch.ops.ia_kernels.logprob_rows_forward(z, targets, float(temperature), int(ignore_index), logp, lse, entropy)


def rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    torch.ops.ia_kernels.logprob_rows_backward(z, targets, float(temperature), int(ignore_index), lse, entropy,
                                               g_logp, g_entropy)

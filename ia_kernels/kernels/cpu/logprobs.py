"""The cpu backend of the log-prob row pass: ia_kernels._C's OpenMP kernels (csrc/cpu/logprobs.cpp),
registered as the CPU kernels of the custom ops defined in ops/custom_ops.py
(torch.ops.ia_kernels.logprob_rows_forward / _backward). The ops are public and hand raw pointers
to native code: each kernel validates its arguments first (core.checks.row_pass_args,
microseconds per chunk of logits).
"""

from __future__ import annotations

import torch

from ... import _native
from ...core import checks
from ...ops import custom_ops


@torch.library.register_kernel(custom_ops.LOGPROB_ROWS_FORWARD, "cpu")
def _forward_kernel(z, targets, temperature, ignore_index, logp, lse, entropy):
    checks.row_pass_args("logprob_rows_forward", z, targets, temperature, ignore_index,
                         logp=logp, lse=lse, entropy=entropy)
    _native.cpu_module().logprob_rows_forward(
        **_native.logprob_forward_args(z, targets, temperature, ignore_index, logp, lse, entropy))


@torch.library.register_kernel(custom_ops.LOGPROB_ROWS_BACKWARD, "cpu")
def _backward_kernel(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    checks.row_pass_args("logprob_rows_backward", z, targets, temperature, ignore_index,
                         lse=lse, entropy=entropy, g_logp=g_logp, g_entropy=g_entropy)
    _native.cpu_module().logprob_rows_backward(
        **_native.logprob_backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy))


# The row passes go through the dispatcher, which runs the kernel above for CPU tensors.
rows_forward = custom_ops.rows_forward
rows_backward = custom_ops.rows_backward

"""The cuda backend of the log-prob row pass: ia_kernels._cuda's kernels (csrc/cuda/logprobs.cu),
launched on the current stream, registered as the CUDA kernels of the custom ops defined in
ops/custom_ops.py. Like the CPU kernels, each validates its arguments first (the ops are public).
"""

from __future__ import annotations

import torch

from ... import _native
from ...core import checks
from ...ops import custom_ops


@torch.library.register_kernel(custom_ops.LOGPROB_ROWS_FORWARD, "cuda")
def _forward_kernel(z, targets, temperature, ignore_index, logp, lse, entropy):
    checks.row_pass_args("logprob_rows_forward", z, targets, temperature, ignore_index,
                         logp=logp, lse=lse, entropy=entropy)
    _native.cuda_module().logprob_rows_forward(
        **_native.logprob_forward_args(z, targets, temperature, ignore_index, logp, lse, entropy),
        stream=_native.stream_of(z))


@torch.library.register_kernel(custom_ops.LOGPROB_ROWS_BACKWARD, "cuda")
def _backward_kernel(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    checks.row_pass_args("logprob_rows_backward", z, targets, temperature, ignore_index,
                         lse=lse, entropy=entropy, g_logp=g_logp, g_entropy=g_entropy)
    _native.cuda_module().logprob_rows_backward(
        **_native.logprob_backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy),
        stream=_native.stream_of(z))


# The row passes go through the dispatcher, which runs the kernel above for CUDA tensors.
rows_forward = custom_ops.rows_forward
rows_backward = custom_ops.rows_backward

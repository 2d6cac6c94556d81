"""The cuda backend of the log-prob row pass: ia_kernels._cuda's kernels (csrc/cuda/logprobs.cu),
launched on the current stream. The custom ops are defined (and validate their arguments) in
kernels/cpu/logprobs.py; this module registers their CUDA kernels.
"""

from __future__ import annotations

import torch

from ... import _native
from ...core import checks
from ..cpu.logprobs import backward_args, forward_args, rows_backward, rows_forward  # noqa: F401 (the same ops)


@torch.library.register_kernel("ia_kernels::logprob_rows_forward", "cuda")
def _forward_op(z, targets, temperature, ignore_index, logp, lse, entropy):
    checks.row_pass_args("logprob_rows_forward", z, targets, temperature, ignore_index,
                         logp=logp, lse=lse, entropy=entropy)
    _native.cuda_module().logprob_rows_forward(**forward_args(z, targets, temperature, ignore_index, logp, lse, entropy),
                                               stream=_native.stream_of(z))


@torch.library.register_kernel("ia_kernels::logprob_rows_backward", "cuda")
def _backward_op(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    checks.row_pass_args("logprob_rows_backward", z, targets, temperature, ignore_index,
                         lse=lse, entropy=entropy, g_logp=g_logp, g_entropy=g_entropy)
    _native.cuda_module().logprob_rows_backward(
        **backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy),
        stream=_native.stream_of(z))

"""ia_kernels' torch custom ops, each defined once here: torch.ops.ia_kernels.logprob_rows_forward
and torch.ops.ia_kernels.logprob_rows_backward, the compiled log-prob row passes.

They are custom ops so that torch.compile sees an opaque, in-place op instead of breaking its graph
at a pybind11 call. This module holds only their schemas (from the signatures below; the ops
mutate their output rows, or z in place, and return nothing, so torch makes their fake kernels):
no device kernel. Each native backend registers its kernel for its own dispatch key when its
module loads: kernels/cpu/logprobs.py for CPU, kernels/cuda/logprobs.py for CUDA (ops/logprobs.py
loads both through the registry at import, so the ops run from `import ia_kernels` on). The ops
are public and hand raw pointers to native code, so each kernel validates its arguments first
(core.checks.row_pass_args).
"""

from __future__ import annotations

import torch

LOGPROB_ROWS_FORWARD = "ia_kernels::logprob_rows_forward"
LOGPROB_ROWS_BACKWARD = "ia_kernels::logprob_rows_backward"


# device_types=(): the schema, fake and autograd handling only; the backends add the device kernels.
@torch.library.custom_op(LOGPROB_ROWS_FORWARD, mutates_args=("logp", "lse", "entropy"), device_types=())
def _logprob_rows_forward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                          logp: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor) -> None:
    """Writes each row's logp, lse and entropy (kernels/torch/logprobs.py's rows_forward)."""
    raise NotImplementedError  # never called: device_types=() registers this body for no device


@torch.library.custom_op(LOGPROB_ROWS_BACKWARD, mutates_args=("z",), device_types=())
def _logprob_rows_backward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                           lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor,
                           g_entropy: torch.Tensor | None) -> None:
    """Overwrites z with dLoss/dz (kernels/torch/logprobs.py's rows_backward)."""
    raise NotImplementedError  # never called: device_types=() registers this body for no device


def rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
    """The forward row pass through the dispatcher: the kernel of z's device."""
    torch.ops.ia_kernels.logprob_rows_forward(z, targets, float(temperature), int(ignore_index), logp, lse, entropy)


def rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    """The backward row pass through the dispatcher: the kernel of z's device."""
    torch.ops.ia_kernels.logprob_rows_backward(z, targets, float(temperature), int(ignore_index), lse, entropy,
                                               g_logp, g_entropy)

"""Row-pass kernels of the fused linear log-prob op, one per backend, behind one interface.

A row pass takes a contiguous chunk of fp32 logits [rows, V]:
  forward(z, targets, temperature, ignore_index, logp, lse, entropy)   writes the three [rows] outputs
  backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy)
                                                                        overwrites z with dLoss/dz
g_entropy may be None. The maths is in csrc/include/ia/logprob_row.h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import _native


@dataclass(frozen=True)
class RowPass:
    name: str
    forward: Callable
    backward: Callable


def _torch_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
    x = z / temperature
    lse_ = torch.logsumexp(x, dim=-1)
    ignored = targets == ignore_index
    safe = torch.where(ignored, torch.zeros_like(targets), targets)
    logp.copy_(torch.where(ignored, torch.zeros_like(lse_), x.gather(1, safe[:, None]).squeeze(1) - lse_))
    p = torch.exp(x - lse_[:, None])
    entropy.copy_(lse_ - (p * x).sum(-1))
    lse.copy_(lse_)


def _torch_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    ignored = targets == ignore_index
    g = torch.where(ignored, torch.zeros_like(g_logp), g_logp)
    z.div_(temperature)  # z now holds x = z / T
    z.sub_(lse[:, None])  # log p
    p = torch.exp(z)
    if g_entropy is not None:
        # dH/dx = -p (log p + H)
        z.add_(entropy[:, None]).mul_(p).mul_(-g_entropy[:, None])
    else:
        z.zero_()
    z.sub_(p * g[:, None])
    safe = torch.where(ignored, torch.zeros_like(targets), targets)
    z.scatter_add_(1, safe[:, None], g[:, None])
    z.div_(temperature)


# The compiled row passes are registered as torch custom ops so that torch.compile sees an opaque,
# in-place op instead of breaking its graph at a pybind11 call. One op per direction serves CPU and
# CUDA tensors: the implementation picks the compiled module from the tensors' device.
@torch.library.custom_op("ia_kernels::logprob_rows_forward", mutates_args=("logp", "lse", "entropy"))
def _native_forward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                    logp: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor) -> None:
    args = (z.data_ptr(), z.stride(0), z.shape[0], z.shape[1], targets.data_ptr(), float(temperature),
            int(ignore_index), logp.data_ptr(), lse.data_ptr(), entropy.data_ptr())
    if z.is_cuda:
        _native.cuda_module().logprob_rows_forward(*args, _native.stream_of(z))
    else:
        _native.cpu_module().logprob_rows_forward(*args)


@torch.library.custom_op("ia_kernels::logprob_rows_backward", mutates_args=("z",))
def _native_backward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                     lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor,
                     g_entropy: torch.Tensor | None) -> None:
    args = (z.data_ptr(), z.stride(0), z.shape[0], z.shape[1], targets.data_ptr(), float(temperature),
            int(ignore_index), lse.data_ptr(), entropy.data_ptr(), g_logp.data_ptr(), _native.ptr(g_entropy))
    if z.is_cuda:
        _native.cuda_module().logprob_rows_backward(*args, _native.stream_of(z))
    else:
        _native.cpu_module().logprob_rows_backward(*args)


def _triton_forward(*args):
    from ..triton import logprobs as tl_logprobs  # imported late: triton is optional

    tl_logprobs.rows_forward(*args)


def _triton_backward(*args):
    from ..triton import logprobs as tl_logprobs

    tl_logprobs.rows_backward(*args)


ROW_PASSES = {
    "torch": RowPass("torch", _torch_forward, _torch_backward),
    "cpu": RowPass("cpu", _native_forward, _native_backward),
    "cuda": RowPass("cuda", _native_forward, _native_backward),
    "triton": RowPass("triton", _triton_forward, _triton_backward),
}

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


# exp(x - m) underflows to 0 below -104: shifted logits are floored here so that a -inf logit (a
# banned token) adds 0, not 0 * -inf = NaN, to the entropy and its gradient (ia::kShiftedLogitFloor).
SHIFTED_LOGIT_FLOOR = -1e4


def _torch_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
    # Everything is computed around the row maximum m: entropy = log s - sum e d / s with
    # d = x - m <= 0 and s = sum e, e = exp(d). The unshifted lse - sum p x cancels catastrophically
    # for large, peaked logits. A row with NaN or +inf (or only -inf) gets NaN d, hence NaN outputs,
    # as on every other backend.
    x = z / temperature
    ignored = targets == ignore_index
    in_range = (targets >= 0) & (targets < x.shape[1])
    safe = torch.where(in_range, targets, torch.zeros_like(targets))
    x_t = x.gather(1, safe[:, None]).squeeze(1)
    m = x.amax(dim=-1)
    d = x.sub_(m[:, None]).clamp_(min=SHIFTED_LOGIT_FLOOR)
    e = torch.exp(d)
    s = e.sum(-1)
    log_s = torch.log(s)
    lse_ = m + log_s
    # x_t <= m <= lse holds up to rounding of the additions: clamp so that logp <= 0 exactly.
    lp = torch.clamp(x_t - lse_, max=0.0)
    lp = torch.where(in_range, lp, torch.full_like(lp, float("nan")))
    logp.copy_(torch.where(ignored, torch.zeros_like(lp), lp))
    entropy.copy_(torch.clamp(log_s - (e.mul_(d)).sum(-1) / s, min=0.0))
    lse.copy_(lse_)


def _torch_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    ignored = targets == ignore_index
    in_range = (targets >= 0) & (targets < z.shape[1])
    g = torch.where(ignored, torch.zeros_like(g_logp), g_logp)
    z.div_(temperature)  # z now holds x = z / T
    z.sub_(lse[:, None]).clamp_(min=SHIFTED_LOGIT_FLOOR)  # log p
    p = torch.exp(z)
    if g_entropy is not None:
        # dH/dx = -p (log p + H)
        z.add_(entropy[:, None]).mul_(p).mul_(-g_entropy[:, None])
    else:
        z.zero_()
    z.sub_(p * g[:, None])
    safe = torch.where(in_range, targets, torch.zeros_like(targets))
    z.scatter_add_(1, safe[:, None], torch.where(in_range, g, torch.zeros_like(g))[:, None])
    z.div_(temperature)
    # A target outside [0, V) that is not ignored: a NaN gradient row, as the native kernels write.
    z.masked_fill_((~ignored & ~in_range)[:, None], float("nan"))


def _check_row_pass_args(op: str, z: torch.Tensor, targets: torch.Tensor, temperature: float,
                         ignore_index: int, **per_row: torch.Tensor | None) -> None:
    """The registered ops are public (torch.ops.ia_kernels.*) and hand raw pointers to native code:
    everything the kernels assume is checked here, each error naming the op and the argument."""
    if not (isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.dim() == 2):
        raise ValueError(f"{op}: z must be a 2-D float32 tensor [rows, V] of logits, got "
                         f"{getattr(z, 'dtype', type(z).__name__)} {tuple(getattr(z, 'shape', ()))}")
    rows, vocab = z.shape
    if z.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: z must be on a CPU or CUDA device, got {z.device}")
    if rows and (z.stride(1) != 1 or z.stride(0) < vocab):
        raise ValueError(f"{op}: z's rows must be contiguous (strides ({vocab} or more, 1)), got {z.stride()}")
    if not (isinstance(targets, torch.Tensor) and targets.dtype == torch.int64 and tuple(targets.shape) == (rows,)):
        raise ValueError(f"{op}: targets must be an int64 tensor of shape ({rows},), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    if not (isinstance(temperature, float) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"{op}: temperature must be a finite float > 0, got {temperature!r}")
    for name, t in {"targets": targets, **per_row}.items():
        if t is None:
            continue
        if name != "targets" and not (t.dtype == torch.float32 and tuple(t.shape) == (rows,)):
            raise ValueError(f"{op}: {name} must be a float32 tensor of shape ({rows},), got {t.dtype} {tuple(t.shape)}")
        if t.device != z.device:
            raise ValueError(f"{op}: {name} is on {t.device} but z is on {z.device}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")


# The compiled row passes are registered as torch custom ops so that torch.compile sees an opaque,
# in-place op instead of breaking its graph at a pybind11 call. One op per direction serves CPU and
# CUDA tensors: the implementation picks the compiled module from the tensors' device. Each op
# validates its arguments (they reach native code as raw pointers), at a cost of microseconds per
# chunk of logits.
@torch.library.custom_op("ia_kernels::logprob_rows_forward", mutates_args=("logp", "lse", "entropy"))
def _native_forward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                    logp: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor) -> None:
    _check_row_pass_args("logprob_rows_forward", z, targets, temperature, ignore_index,
                         logp=logp, lse=lse, entropy=entropy)
    args = dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                logp=logp.data_ptr(), lse=lse.data_ptr(), entropy=entropy.data_ptr())
    if z.is_cuda:
        _native.cuda_module().logprob_rows_forward(**args, stream=_native.stream_of(z))
    else:
        _native.cpu_module().logprob_rows_forward(**args)


@torch.library.custom_op("ia_kernels::logprob_rows_backward", mutates_args=("z",))
def _native_backward(z: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                     lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor,
                     g_entropy: torch.Tensor | None) -> None:
    _check_row_pass_args("logprob_rows_backward", z, targets, temperature, ignore_index,
                         lse=lse, entropy=entropy, g_logp=g_logp, g_entropy=g_entropy)
    args = dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                lse=lse.data_ptr(), entropy=entropy.data_ptr(), g_logp=g_logp.data_ptr(),
                g_entropy=_native.ptr(g_entropy))
    if z.is_cuda:
        _native.cuda_module().logprob_rows_backward(**args, stream=_native.stream_of(z))
    else:
        _native.cpu_module().logprob_rows_backward(**args)


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

"""linear_logprobs: per-token log-probs (and entropy) at the LM head without materialising logits.

Layers: row-pass kernels (ops/_logprob_rows.py, csrc/, triton/) -> chunked launcher
(`_chunked_forward` / `_chunked_backward`, GEMMs in ops/_lm_head.py) -> autograd Function
(`LinearLogprobsFunction`) -> public function (`linear_logprobs`).

Memory: one chunk of fp32 logits [rows, V] at a time, in forward and in backward. Backward
recomputes each chunk's logits (the upstream gradient is unknown during forward), so forward +
backward costs 8 N H V FLOPs; the fused PPO loss (ops/ppo.py) knows its gradient up front and
costs 6 N H V.
"""

from __future__ import annotations

import torch

from .. import backends
from . import _checks
from ._lm_head import LMHead, chunk_rows
from ._logprob_rows import ROW_PASSES, RowPass


def _chunked_forward(row_pass: RowPass, hidden, head: LMHead, targets, temperature, ignore_index, rows):
    n = hidden.shape[0]
    out_dtype = head.logits_dtype
    logp = torch.empty(n, dtype=out_dtype, device=hidden.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp)
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        z = head.logits(hidden[sl])
        row_pass.forward(z, targets[sl], temperature, ignore_index, logp[sl], lse[sl], entropy[sl])
        del z  # else the next chunk's logits are allocated while this chunk's are still referenced
    return logp, lse, entropy


def _chunked_backward(row_pass: RowPass, hidden, weight, bias, head: LMHead, targets, temperature,
                      ignore_index, rows, lse, entropy, g_logp, g_entropy, needs):
    n = hidden.shape[0]
    need_h, need_w, need_b = needs
    grad_hidden = torch.empty_like(hidden) if need_h else None
    # Weight/bias gradients accumulate over chunks in fp32 (deterministic: no atomics), cast at the end.
    acc_dtype = head.logits_dtype
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
    grad_bias = torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device) if need_b else None
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        z = head.logits(hidden[sl])
        row_pass.backward(z, targets[sl], temperature, ignore_index, lse[sl], entropy[sl], g_logp[sl],
                          None if g_entropy is None else g_entropy[sl])
        head.backprop_chunk(z, hidden[sl], None if grad_hidden is None else grad_hidden[sl], grad_weight, grad_bias)
        del z  # one chunk of logits at a time
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


class LinearLogprobsFunction(torch.autograd.Function):
    """Autograd over the chunked forward/backward; hidden is [N, H], targets [N] int64."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, ignore_index, row_pass, rows):
        head = LMHead.prepare(weight, bias)
        logp, lse, entropy = _chunked_forward(row_pass, hidden, head, targets, temperature, ignore_index, rows)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.config = (temperature, ignore_index, row_pass, rows)
        ctx.mark_non_differentiable(lse)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, g_logp, g_entropy, _g_lse):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        temperature, ignore_index, row_pass, rows = ctx.config
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        dtype = lse.dtype
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.to(dtype).contiguous()
        g_entropy = None if g_entropy is None else g_entropy.to(dtype).contiguous()
        head = LMHead.prepare(weight, bias)
        gh, gw, gb = _chunked_backward(row_pass, hidden, weight, bias, head, targets, temperature, ignore_index,
                                       rows, lse, entropy, g_logp, g_entropy, needs)
        return gh, gw, gb, None, None, None, None, None


def _validate(hidden, weight, targets, bias, temperature):
    _checks.require_float("hidden", hidden)
    _checks.require_float("weight", weight)
    _checks.require_int("targets", targets)
    if bias is not None:
        _checks.require_float("bias", bias)
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, H], got {tuple(weight.shape)}")
    H = hidden.shape[-1]
    if weight.shape[1] != H:
        raise ValueError(f"weight must have shape [V, {H}] to match hidden [..., {H}], got {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (vocabulary size V >= 1)")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])} (hidden's leading dims), "
                         f"got {tuple(targets.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    _checks.require_same_device(hidden=hidden, weight=weight, targets=targets, bias=bias)
    return _checks.require_positive_finite("temperature", temperature)


def as_int64_targets(targets: torch.Tensor, vocab: int, ignore_index) -> tuple[torch.Tensor, int]:
    """(targets as int64, ignore_index as int), validated in the dtype the kernels read.

    Narrower integer targets are widened first: checked in their own dtype, uint8 would wrap
    ignore_index=-100 to 156 and accept ids that the kernels then read as out of range. One host
    sync, on the small integer targets only.
    """
    ignore_index = _checks.require_index("ignore_index", ignore_index)
    t = targets.to(torch.int64)
    valid = t != ignore_index
    if valid.any():
        tv = t[valid]
        lo, hi = int(tv.min()), int(tv.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {bad}")
    return t, ignore_index


def _run(backend_impl, hidden, weight, targets, bias, temperature, ignore_index, chunk_size):
    H = hidden.shape[-1]
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(lead.numel(), H)  # not reshape(-1, H): H may be 0
    if not h2.is_contiguous():
        h2 = h2.contiguous()
    t = targets.reshape(-1).contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    rows = chunk_rows(h2.shape[0], weight.shape[0], hidden.device, chunk_size)
    row_pass = backend_impl
    if hidden.dtype == torch.float64:
        row_pass = ROW_PASSES["torch"]  # the compiled and Triton row passes are fp32-only
    logp, entropy, _ = LinearLogprobsFunction.apply(h2, w, bias, t, temperature, ignore_index, row_pass, rows)
    return logp.reshape(lead), entropy.reshape(lead)


_OP = backends.register("linear_logprobs", dict(ROW_PASSES), cuda_preference=("triton", "cuda", "torch"))


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, ignore_index: int = -100,
                    return_entropy: bool = False, backend: str | None = None, chunk_size: int | None = None):
    """Log-probabilities of `targets` under the LM head, without materialising the logits.

    Args:
        hidden: [..., H] final hidden states (fp32, bf16, fp16 or fp64).
        weight: [V, H] LM-head weight, same dtype as hidden.
        targets: [...] integer token ids in [0, V), or `ignore_index`.
        bias: optional [V] LM-head bias.
        temperature: the sampling temperature T > 0; logits are divided by it.
        ignore_index: targets equal to it give logp 0 and no gradient through logp.
        return_entropy: also return the entropy of softmax(logits / T) per position.
        backend: "torch", "cpu", "triton" or "cuda"; None picks the fastest for the device
            (see ia_kernels.available_backends and the IA_KERNELS_BACKEND variable).
        chunk_size: rows of logits per chunk; None sizes chunks to IA_KERNELS_CHUNK_BYTES
            (64 MiB on CPU, 1 GiB on CUDA).

    Returns:
        fp32 logp [...] (float64 for float64 inputs), and entropy [...] if return_entropy.
        Differentiable w.r.t. hidden, weight and bias.
    """
    temperature = _validate(hidden, weight, targets, bias, temperature)
    targets, ignore_index = as_int64_targets(targets, weight.shape[0], ignore_index)
    _, impl = _OP.select(hidden.device, backend)
    logp, entropy = _run(impl, hidden, weight, targets, bias, temperature, ignore_index, chunk_size)
    return (logp, entropy) if return_entropy else logp

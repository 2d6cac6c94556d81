"""linear_logprobs: per-token log-probs (and entropy) at the LM head without materialising logits.

Layers: row-pass kernels (kernels/<backend>/logprobs.py: torch, cpu, cuda, triton) -> the chunk
driver (core/chunks.py: chunking, buffers, GEMMs) -> autograd Function (`LinearLogprobsFunction`)
-> public function (`linear_logprobs`: validation, backend selection).

Memory: one chunk of fp32 logits [rows, V] at a time, in forward and in backward. Backward
recomputes each chunk's logits (the upstream gradient is unknown during forward), so forward +
backward costs 8 N H V FLOPs; the fused PPO loss (ops/linear_ppo.py) knows its gradient up front
and costs 6 N H V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import backends
from ..core import checks as _checks
from ..core.chunks import ChunkDriver, LogitTransform, chunk_rows, chunk_setting
from ..core.numerics import FP32, FP32_FP64, compute_dtype
from ..core.vocab_parallel import LocalCall, VocabShard, resolve_lm_head, targets_checksum


@dataclass(frozen=True)
class RowPassCall:
    """What a log-prob row pass needs besides the logits: the backend's row-pass module and the
    per-call settings."""

    kernels: object  # kernels/<backend>/logprobs.py: rows_forward, rows_backward
    targets: torch.Tensor  # [N] int64 ids the kernels read: global, or within this rank's block
    temperature: float
    ignore_index: int
    rows: int  # rows of logits per chunk (the same on every rank of a vocabulary-parallel group)
    ignored: torch.Tensor  # [N] bool: positions whose (global) target is ignore_index
    shard: VocabShard | None = None  # this rank's vocabulary block, when the LM head is sharded
    transform: LogitTransform | None = None  # the model's logit scale / soft cap


def row_pass_call(kernels, targets, temperature, ignore_index, rows, shard=None, transform=None) -> RowPassCall:
    """A RowPassCall for validated int64 global targets [N]."""
    kernel_targets = targets if shard is None else shard.localise(targets, ignore_index)
    return RowPassCall(kernels, kernel_targets, temperature, ignore_index, rows, targets == ignore_index, shard,
                       transform)


def chunked_forward(call: RowPassCall, hidden, weight, bias):
    """(logp, lse, entropy) [N] in the logits' dtype: one row pass per chunk, no gradients."""
    driver = ChunkDriver(hidden, weight, bias, call.rows, transform=call.transform)
    logp, lse, entropy = torch.empty((3, hidden.shape[0]), dtype=driver.dtype, device=hidden.device).unbind(0)

    def row_pass(z, a, b):
        call.kernels.rows_forward(z, call.targets[a:b], call.temperature, call.ignore_index, logp[a:b], lse[a:b],
                                  entropy[a:b])

    driver.run(row_pass, backprop=False)
    if call.shard is not None:  # this block's statistics -> the whole vocabulary's (two all-reduces)
        logp, lse, entropy = call.shard.combine(logp, lse, entropy, call.targets, call.ignore_index)
        logp = torch.where(call.ignored, 0.0, logp)
    return logp, lse, entropy


def chunked_backward(call: RowPassCall, hidden, weight, bias, lse, entropy, g_logp, g_entropy, needs):
    """(grad_hidden, grad_weight, grad_bias) of sum g_logp * logp + g_entropy * entropy, recomputing
    each chunk's logits (g_entropy may be None)."""
    driver = ChunkDriver(hidden, weight, bias, call.rows, needs, call.transform)

    def row_pass(z, a, b):
        call.kernels.rows_backward(z, call.targets[a:b], call.temperature, call.ignore_index, lse[a:b], entropy[a:b],
                                   g_logp[a:b], None if g_entropy is None else g_entropy[a:b])

    driver.run(row_pass)
    gh, gw, gb = driver.grads()
    if call.shard is not None:  # each rank's block contributes to every position's hidden gradient
        call.shard.sum_over_ranks(gh)
    return gh, gw, gb


class LinearLogprobsFunction(torch.autograd.Function):
    """Autograd over the chunked forward/backward; hidden is [N, H]."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, call: RowPassCall):
        logp, lse, entropy = chunked_forward(call, hidden, weight, bias)
        ctx.save_for_backward(hidden, weight, bias, lse, entropy)
        ctx.call = call
        ctx.mark_non_differentiable(lse)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, g_logp, g_entropy, _g_lse):
        hidden, weight, bias, lse, entropy = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        dtype = lse.dtype
        # Ignored positions get no gradient through logp (the row passes only drop their target term).
        g_logp = (torch.zeros_like(lse) if g_logp is None
                  else torch.where(ctx.call.ignored, 0.0, g_logp.to(dtype)).contiguous())
        g_entropy = None if g_entropy is None else g_entropy.to(dtype).contiguous()
        gh, gw, gb = chunked_backward(ctx.call, hidden, weight, bias, lse, entropy, g_logp, g_entropy, needs)
        return gh, gw, gb, None


def validate_lm_head(hidden, weight, targets, bias, temperature) -> float:
    """Checks an LM-head call's tensors (dtypes, shapes, one device) and returns the temperature as a
    positive finite float. Shared by linear_logprobs and linear_ppo_loss."""
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
    if hidden.dtype != weight.dtype and not (weight.dtype == torch.float32 and hidden.dtype in _LOW_PRECISION):
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype, or be "
                         f"bf16/fp16 hidden states with an fp32 weight (an LM head kept in fp32)")
    _checks.require_same_device(hidden=hidden, weight=weight, targets=targets, bias=bias)
    temperature = _checks.require_positive_finite("temperature", temperature)
    return _checks.require_float32_range("temperature", temperature, compute_dtype(weight.dtype), reciprocal=True,
                                         why=" (logits are multiplied by 1 / temperature)")


_LOW_PRECISION = (torch.bfloat16, torch.float16)


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


_OP = backends.register("linear_logprobs", {
    "torch": backends.Impl("ia_kernels.kernels.torch.logprobs", FP32_FP64),
    "cpu": backends.Impl("ia_kernels.kernels.cpu.logprobs", FP32),
    "triton": backends.Impl("ia_kernels.kernels.triton.logprobs", FP32),
    "cuda": backends.Impl("ia_kernels.kernels.cuda.logprobs", FP32),
}, cuda_preference=("triton", "cuda", "torch"))
# The compiled row passes are public torch custom ops (torch.ops.ia_kernels.logprob_rows_*, defined in
# custom_ops.py) whose CPU and CUDA kernels register when those backends' modules load: load them
# now, so that the ops run from `import ia_kernels` on, not from the first call that selects them.
# Neither load needs its compiled module (that is loaded at the first launch).
for _native_backend in ("cpu", "cuda"):
    backends.kernel_module("linear_logprobs", _native_backend)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, ignore_index: int = -100,
                    return_entropy: bool = False, logit_scale: float | None = None, softcap: float | None = None,
                    backend: str | None = None, chunk_size: int | None = None, tp_group=None):
    """Log-probabilities of `targets` under the LM head, without materialising the logits.

    Args:
        hidden: [..., H] final hidden states (fp32, bf16, fp16 or fp64).
        weight: [V, H] LM-head weight, same dtype as hidden, or fp32 with bf16/fp16 hidden (an LM
            head kept in fp32, as TRL's cast_lm_head_to_fp32): the GEMMs then run in fp32.
        targets: [...] integer token ids in [0, V), or `ignore_index`.
        bias: optional [V] LM-head bias.
        temperature: the sampling temperature T > 0; logits are divided by it.
        ignore_index: targets equal to it give logp 0 and no gradient through logp.
        return_entropy: also return the entropy of softmax(logits / T) per position.
        logit_scale, softcap: the model's logit transform, applied before the temperature:
            logits = softcap * tanh(logit_scale * z / softcap), or logit_scale * z without a cap
            (Cohere scales its logits, Gemma 2/3 soft-cap them at 30).
        backend: "torch", "cpu", "triton" or "cuda"; None picks the fastest verified one for the
            device and dtype (see ia_kernels.available_backends and the IA_KERNELS_BACKEND
            variable). The compiled and Triton row passes compute in fp32: float64 inputs need
            "torch" (or None); naming another backend for them is a ValueError.
        chunk_size: rows of logits per chunk; None sizes chunks to IA_KERNELS_CHUNK_BYTES
            (64 MiB on CPU, 1 GiB on CUDA).
        tp_group: a torch.distributed process group over which the LM head is sharded by
            vocabulary: `weight` (and `bias`) are this rank's contiguous block of rows (blocks in
            rank order, sizes may differ), `targets` are global ids, and every rank gets the full
            outputs. A DTensor weight placed Shard(0) on a 1-D mesh brings its own group. Per
            chunk a few floats per token are all-reduced (never the logits); backward all-reduces
            the hidden gradient; the weight gradient is this rank's block's. core/vocab_parallel.py.
            Every rank validates its arguments, then one small all-gather checks that the ranks
            agree (H, token count, chunk_size, temperature, ...): a mismatch, or one rank's
            refused arguments, is the same ValueError on every rank, never a hang.

    Returns:
        fp32 logp [...] (float64 for float64 inputs), and entropy [...] if return_entropy.
        Differentiable w.r.t. hidden, weight and bias.
    """
    weight, bias, tp_group = resolve_lm_head(weight, bias, tp_group)

    def prepare() -> LocalCall:
        """This rank's validation: everything but the targets' range (the vocabulary may be sharded)."""
        temp = validate_lm_head(hidden, weight, targets, bias, temperature)
        ignore = _checks.require_index("ignore_index", ignore_index)
        transform = LogitTransform.of(logit_scale, softcap, compute_dtype(weight.dtype))
        chunk, chunk_bytes = chunk_setting(hidden.device, chunk_size)
        _, kernels = _OP.select(hidden.device, compute_dtype(weight.dtype), backend)
        t64 = targets.to(torch.int64).reshape(-1)
        entries = dict(op=1, H=hidden.shape[-1], tokens=t64.numel(), chunk_size=chunk, chunk_bytes=chunk_bytes,
                       targets=targets_checksum(t64, t64 != ignore) if tp_group is not None else None,
                       float64=compute_dtype(weight.dtype) == torch.float64,
                       hidden_grad=torch.is_grad_enabled() and hidden.requires_grad, temperature=temp,
                       ignore_index=ignore, logit_scale=None if transform is None else transform.scale,
                       softcap=None if transform is None else transform.softcap)
        return LocalCall(weight.shape[0], entries, (temp, ignore, transform, kernels, t64), targets=t64,
                         read=t64 != ignore)

    if tp_group is None:
        shard, (temperature, ignore_index, transform, kernels, flat_targets) = None, prepare().result
        flat_targets, ignore_index = as_int64_targets(flat_targets, weight.shape[0], ignore_index)
    else:  # every rank validates, then one all-gather: the ranks raise together or run together
        shard, (temperature, ignore_index, transform, kernels, flat_targets) = VocabShard.agree(
            tp_group, hidden.device if isinstance(hidden, torch.Tensor) else None, prepare)
    vocab = weight.shape[0] if shard is None else shard.total
    H, lead = hidden.shape[-1], hidden.shape[:-1]
    h2 = hidden.reshape(lead.numel(), H)  # not reshape(-1, H): H may be 0
    h2 = h2 if h2.is_contiguous() else h2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    call = row_pass_call(kernels, flat_targets.contiguous(), temperature, ignore_index,
                         chunk_rows(h2.shape[0], vocab, hidden.device, chunk_size), shard, transform)
    logp, entropy, _ = LinearLogprobsFunction.apply(h2, w, bias, call)
    logp, entropy = logp.reshape(lead), entropy.reshape(lead)
    return (logp, entropy) if return_entropy else logp

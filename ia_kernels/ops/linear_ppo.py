"""linear_ppo_loss: hidden states in, PPO loss and all its gradients out, logits never stored.

Layers: row passes (`ppo_rows_fused` in csrc/cpu/ppo.cpp and triton/ppo.py, `_torch_fused_rows`
here; the log-prob row passes of ops/_logprob_rows.py) -> chunked launchers (`_token_level_pass`,
`_sequence_level_one_pass`, `_sequence_level_two_phase`; GEMMs in ops/_lm_head.py) -> autograd
Function (`LinearPpoLossFunction`) -> public `linear_ppo_loss`.

Only valid tokens are computed: padding rows are dropped before the chunk GEMMs (`ValidRows`), the
compaction sized by the one host sync that validation makes anyway.

Token-level importance, one pass over the tokens, 6 N H V FLOPs: per chunk of rows, one GEMM
makes the fp32 logits, one fused row pass turns each row into (logp, entropy), then into the
token's loss terms and dloss/dlogp, dloss/dentropy (the aggregation weights are known up front from
the mask), and overwrites the row with dloss/dlogits; two GEMMs then add the chunk's hidden and
weight gradients. All of it runs in forward; backward multiplies the stored gradients by
grad_output. Only one chunk of logits exists at a time.

Sequence-level importance (GSPO) needs every token of a sequence before any token's gradient is
known (the ratio is a mean over the sequence). When whole sequences fit in a chunk, chunks are cut
at sequence boundaries and each chunk is finished in place: log-prob row pass, the [B, T] terms of
its sequences, gradient row pass on the same logits, GEMMs (6 N H V). When one sequence is longer
than a chunk, it runs in two phases, 8 N H V FLOPs: a stats pass over all chunks (logits GEMM +
log-prob row pass: logp, lse, entropy), the per-token terms over [B, T] (ops/ppo.py's kernels),
then a gradient pass that recomputes each chunk's logits and runs the log-prob gradient row pass and
the two GEMMs — linear_logprobs's forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import _native, backends
from . import _checks, ppo
from ._lm_head import LMHead, chunk_rows
from ._logprob_rows import ROW_PASSES, RowPass
from .logprobs import _chunked_backward, _chunked_forward, _validate


@dataclass(frozen=True)
class PpoRowBackend:
    """The kernels one backend contributes to the fused linear PPO loss."""

    name: str
    fused_rows: Callable  # token-level fused row pass, signature of `_torch_fused_rows`
    logprob_rows: RowPass  # stats and gradient row passes, for the two-phase sequence level
    terms: Callable  # per-token PPO terms over [B, T] (ops/ppo.py)


def _torch_fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
                      logp, entropy, loss, ratio):
    """The fused row pass in PyTorch: log-prob rows, token terms (each row a one-token sequence of
    weight `weight`), then the gradient rows. Same contract as the native kernels: ignored rows get
    zero outputs (ratio 1) and a zero gradient row."""
    rows_pass = ROW_PASSES["torch"]
    lse = torch.empty_like(logp)
    rows_pass.forward(z, targets, temperature, ignore_index, logp, lse, entropy)
    valid = (targets != ignore_index)[:, None]
    loss_tok, g_logp, g_entropy, ratio_tok = ppo._torch_terms(
        logp[:, None], old_logp[:, None], adv, valid, weight, None if ref_logp is None else ref_logp[:, None],
        entropy[:, None], opts)
    loss.copy_(loss_tok[:, 0])
    ratio.copy_(ratio_tok[:, 0])
    entropy.masked_fill_(~valid[:, 0], 0.0)
    rows_pass.backward(z, targets, temperature, ignore_index, lse, entropy, g_logp[:, 0],
                       g_entropy[:, 0] if opts.entropy_coef != 0 else None)


def _cpu_fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
                    logp, entropy, loss, ratio):
    _native.cpu_module().ppo_rows_fused(
        logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1], targets=targets.data_ptr(),
        temperature=float(temperature), ignore_index=int(ignore_index), old_logp=old_logp.data_ptr(),
        adv=adv.data_ptr(), ref_logp=_native.ptr(ref_logp), weight=weight.data_ptr(), **opts.native_params(),
        logp=logp.data_ptr(), entropy=entropy.data_ptr(), loss=loss.data_ptr(), ratio=ratio.data_ptr())


def _triton_fused_rows(*args):
    from ..triton import ppo as triton_ppo  # imported late: triton is optional

    triton_ppo.ppo_rows_fused(*args)


ROW_BACKENDS = {
    "torch": PpoRowBackend("torch", _torch_fused_rows, ROW_PASSES["torch"], ppo.TERMS["torch"]),
    "cpu": PpoRowBackend("cpu", _cpu_fused_rows, ROW_PASSES["cpu"], ppo.TERMS["cpu"]),
    "triton": PpoRowBackend("triton", _triton_fused_rows, ROW_PASSES["triton"], ppo.TERMS["triton"]),
}


@dataclass
class ValidRows:
    """The valid tokens as rows of the flattened [B * T] token grid, in order.

    The fused passes run over these rows only, so padding costs no GEMM work. The per-sequence
    counts come from the one host sync of validation, which sizes the compaction without another.
    """

    idx: torch.Tensor  # [n] int64 flat indices of the valid tokens
    lengths: list  # valid tokens per sequence (host ints)
    all_valid: bool  # no padding: take/put are identities

    @classmethod
    def of(cls, valid: torch.Tensor, lengths: list) -> "ValidRows":
        n, total = sum(lengths), valid.numel()
        if n == total:
            return cls(torch.arange(total, device=valid.device), lengths, True)
        return cls(torch.nonzero_static(valid.reshape(-1), size=n).squeeze(1), lengths, False)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """[B * T, ...] -> the valid rows [n, ...]."""
        return x if self.all_valid else x.index_select(0, self.idx)

    def put(self, x: torch.Tensor, fill: float, total: int) -> torch.Tensor:
        """The valid rows [n, ...] -> [B * T, ...], padding set to `fill`."""
        if self.all_valid:
            return x
        out = x.new_full((total,) + tuple(x.shape[1:]), fill)
        return out.index_copy_(0, self.idx, x)


def _grad_buffers(hidden, weight, bias, needs, dtype):
    """grad_hidden in hidden's dtype; weight/bias gradients accumulate over chunks in fp32
    (deterministic: no atomics) and are cast at the end by `_finish_grads`."""
    need_h, need_w, need_b = needs
    return (torch.empty_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None,
            torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b else None)


def _finish_grads(grads, weight, bias):
    gh, gw, gb = grads
    return gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype)


def _token_level_pass(be: PpoRowBackend, hidden, weight, bias, head: LMHead, targets, temperature, ignore_index,
                      old_logp, adv, ref_logp, token_weight, opts, rows, needs):
    """One pass over the chunks: (logp, entropy, unweighted token loss, ratio) [n] and the gradients."""
    n = hidden.shape[0]
    logp, entropy, loss_tok, ratio = torch.empty((4, n), dtype=head.logits_dtype, device=hidden.device).unbind(0)
    grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs, head.logits_dtype)
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        z = head.logits(hidden[sl])
        be.fused_rows(z, targets[sl], temperature, ignore_index, old_logp[sl], adv[sl],
                      None if ref_logp is None else ref_logp[sl], token_weight[sl], opts,
                      logp[sl], entropy[sl], loss_tok[sl], ratio[sl])
        if any(needs):
            head.backprop_chunk(z, hidden[sl], None if grad_hidden is None else grad_hidden[sl], grad_weight, grad_bias)
        del z  # else the next chunk's logits are allocated while this chunk's are still referenced
    grads = _finish_grads((grad_hidden, grad_weight, grad_bias), weight, bias)
    return logp, entropy, loss_tok, ratio, grads


def _sequence_groups(lengths: list, rows: int):
    """Runs of consecutive sequences whose valid tokens fit one chunk, as (b0, b1, r0, r1) with
    rows [r0, r1) of the valid rows; None when one sequence alone exceeds a chunk."""
    if max(lengths, default=0) > rows:
        return None
    groups, b0, r0, r = [], 0, 0, 0
    for b, n in enumerate(lengths):
        if r - r0 + n > rows:
            groups.append((b0, b, r0, r))
            b0, r0 = b, r
        r += n
    groups.append((b0, len(lengths), r0, r))
    return groups


def _sequence_level_one_pass(be: PpoRowBackend, hidden, weight, bias, head: LMHead, targets, temperature,
                             ignore_index, old_logp, adv, ref_logp, valid, vrows: ValidRows, groups, opts, needs):
    """GSPO when every chunk holds whole sequences: per chunk, the log-prob row pass gives each of
    its sequences' logp, the [B, T] terms kernel their gradients, and the gradient row pass turns
    the same logits (still in memory) into dloss/dlogits: 6 N H V FLOPs, as at token level."""
    B, T = valid.shape
    dtype = head.logits_dtype
    logp, entropy, loss_tok = torch.zeros((3, B, T), dtype=dtype, device=valid.device).unbind(0)
    ratio = torch.ones((B, T), dtype=dtype, device=valid.device)
    seq_scale = ppo.aggregation_scale(valid, opts, dtype)
    grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs, dtype)
    for b0, b1, r0, r1 in groups:
        if r1 == r0:
            continue  # only fully masked sequences: nothing to add
        z = head.logits(hidden[r0:r1])
        lp, lse, ent = torch.empty((3, r1 - r0), dtype=dtype, device=valid.device).unbind(0)
        be.logprob_rows.forward(z, targets[r0:r1], temperature, ignore_index, lp, lse, ent)
        local = vrows.idx[r0:r1] - b0 * T  # the rows' places in the [b0:b1, T] slab
        logp[b0:b1].view(-1).index_copy_(0, local, lp)
        entropy[b0:b1].view(-1).index_copy_(0, local, ent)
        loss_s, g_logp, g_ent, ratio_s = be.terms(
            logp[b0:b1], old_logp[b0:b1], adv[b0:b1], valid[b0:b1], seq_scale[b0:b1],
            None if ref_logp is None else ref_logp[b0:b1], entropy[b0:b1], opts)
        loss_tok[b0:b1] = loss_s
        ratio[b0:b1] = ratio_s
        if any(needs):
            g_ent = g_ent.reshape(-1).index_select(0, local) if opts.entropy_coef != 0 else None
            be.logprob_rows.backward(z, targets[r0:r1], temperature, ignore_index, lse, ent,
                                     g_logp.reshape(-1).index_select(0, local), g_ent)
            head.backprop_chunk(z, hidden[r0:r1], None if grad_hidden is None else grad_hidden[r0:r1], grad_weight,
                                grad_bias)
        del z  # one chunk of logits at a time
    loss = (loss_tok.sum(1) * seq_scale).sum()
    return loss, logp, entropy, ratio, _finish_grads((grad_hidden, grad_weight, grad_bias), weight, bias)


def _sequence_level_two_phase(be: PpoRowBackend, hidden, weight, bias, head: LMHead, targets, temperature,
                              ignore_index, old_logp, adv, ref_logp, valid, vrows: ValidRows, opts, rows, needs):
    """GSPO when a sequence is longer than a chunk (see the module docstring): stats pass over all
    chunks, [B, T] terms, gradient pass recomputing each chunk's logits: 8 N H V FLOPs."""
    B, T = valid.shape
    logp_v, lse_v, ent_v = _chunked_forward(be.logprob_rows, hidden, head, targets, temperature, ignore_index, rows)
    logp = vrows.put(logp_v, 0.0, B * T).view(B, T)
    entropy = vrows.put(ent_v, 0.0, B * T).view(B, T)
    loss, g_logp, g_ent, ratio = ppo.loss_and_grads(be.terms, logp, old_logp, adv, valid, ref_logp, entropy, opts)
    grads = (None, None, None)
    if any(needs):
        g_ent = vrows.take(g_ent.reshape(-1)) if opts.entropy_coef != 0 else None
        grads = _chunked_backward(be.logprob_rows, hidden, weight, bias, head, targets, temperature, ignore_index,
                                  rows, lse_v, ent_v, vrows.take(g_logp.reshape(-1)), g_ent, needs)
    return loss, logp, entropy, ratio, grads


def _graph_is_kept() -> bool:
    """Will this backward's graph be used again? Unknown (older torch) counts as yes."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):
        return True


class LinearPpoLossFunction(torch.autograd.Function):
    """Differentiable in hidden [N, H], weight and bias; every gradient is made in forward.

    backward scales the stored gradients in place and hands them over (no second [V, H] buffer),
    unless the graph is being retained (retain_graph=True, gradcheck): then it scales a copy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, old_logp, adv, ref_logp, valid, vrows, temperature, ignore_index,
                opts, be, rows, want_grads):
        needs = (want_grads and ctx.needs_input_grad[0], want_grads and ctx.needs_input_grad[1],
                 want_grads and bias is not None and ctx.needs_input_grad[2])
        head = LMHead.prepare(weight, bias)
        B, T = valid.shape
        hidden_v, targets_v = vrows.take(hidden), vrows.take(targets)
        groups = _sequence_groups(vrows.lengths, rows) if opts.importance == "sequence" else None
        if opts.importance == "sequence" and groups is not None:
            loss, logp, entropy, ratio, grads = _sequence_level_one_pass(
                be, hidden_v, weight, bias, head, targets_v, temperature, ignore_index, old_logp, adv, ref_logp,
                valid, vrows, groups, opts, needs)
        elif opts.importance == "sequence":
            loss, logp, entropy, ratio, grads = _sequence_level_two_phase(
                be, hidden_v, weight, bias, head, targets_v, temperature, ignore_index, old_logp, adv, ref_logp,
                valid, vrows, opts, rows, needs)
        else:
            seq_scale = ppo.aggregation_scale(valid, opts, head.logits_dtype)
            token_weight = vrows.take(torch.where(valid, seq_scale[:, None], 0.0).reshape(-1))
            adv_tok = vrows.take((adv[:, None].expand(B, T) if adv.dim() == 1 else adv).reshape(-1)).contiguous()
            logp, entropy, loss_tok, ratio, grads = _token_level_pass(
                be, hidden_v, weight, bias, head, targets_v, temperature, ignore_index,
                vrows.take(old_logp.reshape(-1)), adv_tok,
                None if ref_logp is None else vrows.take(ref_logp.reshape(-1)), token_weight, opts, rows, needs)
            loss = (loss_tok * token_weight).sum()
            logp, entropy = vrows.put(logp, 0.0, B * T).view(B, T), vrows.put(entropy, 0.0, B * T).view(B, T)
            ratio = vrows.put(ratio, 1.0, B * T).view(B, T)
        if grads[0] is not None:
            grads = (vrows.put(grads[0], 0.0, B * T), grads[1], grads[2])
        ctx.grads = grads
        ctx.mark_non_differentiable(logp, entropy, ratio)
        return loss, logp, entropy, ratio

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _g_logp, _g_entropy, _g_ratio):
        if _graph_is_kept():
            scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads]
        else:
            grads, ctx.grads = ctx.grads, None
            scaled = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads]
        return (*scaled, None, None, None, None, None, None, None, None, None, None, None, None)


def _check_values(targets, valid, vocab, advantages, check_finite) -> list:
    """Out-of-range targets would read out of bounds: always rejected. NaN/inf advantages: when
    check_finite. Returns each sequence's number of valid tokens. One host sync for all of it."""
    out_of_range = valid & ((targets < 0) | (targets >= vocab))
    bad = out_of_range.any()
    if check_finite:
        bad = bad | ppo.nonfinite_advantages(advantages, valid)
    host = torch.cat([bad.reshape(1).long(), valid.sum(1)]).tolist()
    if host[0]:  # the error path may sync again to say what is wrong
        if bool(out_of_range.any()):
            found = targets[out_of_range][0].item()
            raise ValueError(f"targets must lie in [0, {vocab}) on valid tokens (or equal ignore_index); found {found}")
        ppo.raise_nonfinite_advantages(advantages, valid)
    return host[1:]


_OP = backends.register("linear_ppo_loss", ROW_BACKENDS, cuda_preference=("triton", "torch"))


def linear_ppo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, old_logp: torch.Tensor,
                    advantages: torch.Tensor, mask: torch.Tensor | None = None, *, bias: torch.Tensor | None = None,
                    temperature: float = 1.0, ignore_index: int = -100, ref_logp: torch.Tensor | None = None,
                    clip_low: float = 0.2, clip_high: float | None = None, dual_clip: float | None = None,
                    kl_coef: float = 0.0, kl_estimator: str = "k3", entropy_coef: float = 0.0,
                    aggregation: str = "token-mean", importance: str = "token", norm_length: int | None = None,
                    check_finite: bool = True, backend: str | None = None, chunk_size: int | None = None):
    """The PPO loss of `ppo_loss` on the log-probs of `targets` under the LM head, fully fused.

    Equals `ppo_loss(linear_logprobs(hidden, weight, targets, ...), old_logp, advantages, mask,
    entropy=<the policy's entropy>, ...)` in value and gradients, without the [N, V] logits.

    Args:
        hidden: [B, T, H] final hidden states (fp32, bf16, fp16 or fp64).
        weight: [V, H] LM-head weight, same dtype as hidden. bias: optional [V].
        targets: [B, T] integer token ids in [0, V) on valid tokens; `ignore_index` also masks a token.
        old_logp, advantages, mask, ref_logp and the loss options: as in `ppo_loss`; the entropy
            is the policy's own (softmax(logits / temperature)), used by entropy_coef and metrics.
        temperature: logits are divided by it (> 0), as at sampling time.
        check_finite: reject NaN/inf advantages. Either way the call makes one host sync, at
            validation: it checks the targets' range and counts each sequence's valid tokens, so
            that masked tokens are dropped before the GEMMs (padding costs no compute).
        backend: "torch", "cpu" or "triton"; None picks the fastest for the device.
        chunk_size: rows of logits per chunk (None: IA_KERNELS_CHUNK_BYTES, 64 MiB on CPU).

    Returns:
        (loss, metrics) as `ppo_loss`, with `entropy_mean` always present. Gradients with respect
        to hidden, weight and bias are computed during this call; backward only scales them.
    """
    opts = ppo.PpoOptions.from_kwargs(clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef,
                                      kl_estimator=kl_estimator, entropy_coef=entropy_coef, aggregation=aggregation,
                                      importance=importance, norm_length=norm_length)
    _checks.require_float("hidden", hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {tuple(hidden.shape)}")
    temperature = _validate(hidden, weight, targets, bias, temperature)
    B, T, H = hidden.shape
    ppo.validate_token_inputs((B, T), old_logp, advantages, mask, ref_logp, None, opts)
    device = _checks.require_same_device(hidden=hidden, old_logp=old_logp, advantages=advantages, mask=mask,
                                         ref_logp=ref_logp)
    # Compared in int64, the dtype the kernels read (uint8 would wrap ignore_index=-100 to 156).
    ignore_index = _checks.require_index("ignore_index", ignore_index)
    targets = targets.to(torch.int64)
    valid = targets != ignore_index
    if mask is not None:
        valid = valid & (mask != 0)
    valid = valid.contiguous()
    lengths = _check_values(targets, valid, weight.shape[0], advantages, check_finite)
    _, be = _OP.select(device, backend)
    if hidden.dtype == torch.float64:
        be = ROW_BACKENDS["torch"]  # the compiled and Triton kernels are fp32-only
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32

    def prep(x):
        return None if x is None else x.detach().to(dtype).contiguous()

    h2 = hidden.reshape(B * T, H)
    h2 = h2 if h2.is_contiguous() else h2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    t = torch.where(valid, targets, ignore_index).reshape(-1).contiguous()
    old, adv, ref = prep(old_logp), prep(advantages), prep(ref_logp)
    rows = chunk_rows(B * T, weight.shape[0], device, chunk_size)
    loss, logp, entropy, ratio = LinearPpoLossFunction.apply(
        h2, w, bias, t, old, adv, ref, valid, ValidRows.of(valid, lengths), temperature, ignore_index, opts, be, rows,
        torch.is_grad_enabled())
    metrics = ppo.ppo_metrics(ratio, logp, old, adv, valid, opts, entropy=entropy, ref_logp=ref)
    return loss, metrics

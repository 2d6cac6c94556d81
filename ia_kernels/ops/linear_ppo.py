"""linear_ppo_loss: hidden states in, PPO loss and all its gradients out, logits never stored.

Layers: row passes (`fused_rows` in kernels/<backend>/ppo.py; the log-prob row passes of
kernels/<backend>/logprobs.py) -> the chunk driver (core/chunks.py: chunking, buffers, GEMMs), run
by `_token_level_pass`, `_sequence_level_one_pass` or `_sequence_level_two_phase` -> autograd
Function (`LinearPpoLossFunction`, its settings in one frozen `LinearPpoCall`) -> public
`linear_ppo_loss`.

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
log-prob row pass: logp, lse, entropy), the per-token terms over [B, T] (the backend's `terms`),
then a gradient pass that recomputes each chunk's logits and runs the log-prob gradient row pass and
the two GEMMs — linear_logprobs's forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import backends
from ..core import checks as _checks
from ..core.chunks import ChunkDriver, LogitTransform, chunk_rows, chunk_setting
from ..core.numerics import FP32, FP32_FP64, as_compute, compute_dtype
from ..core.vocab_parallel import (FLAG_ADVANTAGES, FLAG_IMPORTANCE_WEIGHTS, FLAG_NORMALISER, LocalCall, VocabShard,
                                   resolve_lm_head, targets_checksum)
from . import ppo
from .logprobs import RowPassCall, chunked_backward, chunked_forward, row_pass_call, validate_lm_head


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


@dataclass(frozen=True)
class LinearPpoCall:
    """Everything `LinearPpoLossFunction` needs besides hidden, weight and bias (the differentiable
    inputs): the prepared per-token tensors, the options and the kernels. Per-token tensors are
    contiguous, in the compute dtype; targets are int64 with ignore_index on invalid tokens."""

    targets: torch.Tensor  # [B * T]
    old_logp: torch.Tensor | None  # [B, T]; None: on-policy (the row passes use their own log-probs)
    advantages: torch.Tensor  # [B] or [B, T]
    importance_weights: torch.Tensor | None  # [B, T] constant weights on each token's loss
    ref_logp: torch.Tensor | None  # [B, T]
    valid: torch.Tensor  # [B, T] bool
    vrows: ValidRows
    temperature: float
    ignore_index: int
    opts: ppo.PpoOptions
    ppo_kernels: object  # kernels/<backend>/ppo.py: fused_rows, terms
    logprob_kernels: object  # kernels/<backend>/logprobs.py: rows_forward, rows_backward
    rows: int  # rows of logits per chunk (the same on every rank of a vocabulary-parallel group)
    want_grads: bool  # False under torch.no_grad(): the row passes skip the gradient
    shard: VocabShard | None = None  # this rank's vocabulary block, when the LM head is sharded
    transform: LogitTransform | None = None  # the model's logit scale / soft cap

    def logprob_call(self, targets: torch.Tensor) -> RowPassCall:
        return row_pass_call(self.logprob_kernels, targets, self.temperature, self.ignore_index, self.rows,
                             self.shard, self.transform)


def _token_level_pass(c: LinearPpoCall, driver: ChunkDriver, targets, old_logp, adv, ref_logp, token_weight):
    """One pass over the chunks of valid rows: (logp, entropy, unweighted token loss, ratio) [n];
    the gradients accumulate in the driver."""
    n = driver.hidden.shape[0]
    logp, entropy, loss_tok, ratio = torch.empty((4, n), dtype=driver.dtype, device=driver.hidden.device).unbind(0)

    def row_pass(z, a, b):
        c.ppo_kernels.fused_rows(z, targets[a:b], c.temperature, c.ignore_index,
                                 None if old_logp is None else old_logp[a:b], adv[a:b],
                                 None if ref_logp is None else ref_logp[a:b], token_weight[a:b], c.opts,
                                 logp[a:b], entropy[a:b], loss_tok[a:b], ratio[a:b])

    driver.run(row_pass)
    return logp, entropy, loss_tok, ratio


def _token_level_pass_sharded(c: LinearPpoCall, driver: ChunkDriver, targets, old_logp, adv, ref_logp,
                              token_weight):
    """The token-level pass over this rank's vocabulary block: per chunk, the log-prob row pass on
    the block's logits, the rows' statistics combined across ranks (two all-reduces of a few floats
    per token), the token terms, then the gradient row pass on the same logits: still 6 N H V FLOPs
    in all, split over the ranks."""
    n = driver.hidden.shape[0]
    dtype, device = driver.dtype, driver.hidden.device
    logp, entropy, loss_tok, ratio = torch.empty((4, n), dtype=dtype, device=device).unbind(0)
    local = c.shard.localise(targets, c.ignore_index)

    def col(x, a, b):
        return None if x is None else x[a:b, None]

    def row_pass(z, a, b):
        lp, lse, ent = torch.empty((3, b - a), dtype=dtype, device=device).unbind(0)
        c.logprob_kernels.rows_forward(z, local[a:b], c.temperature, c.ignore_index, lp, lse, ent)
        lp, lse, ent = c.shard.combine(lp, lse, ent, local[a:b], c.ignore_index)
        # Each row is a one-token sequence of weight token_weight (as kernels/torch/ppo.py's fused_rows).
        every = torch.ones((b - a, 1), dtype=torch.bool, device=device)
        loss_s, g_logp, g_ent, ratio_s = c.ppo_kernels.terms(
            lp[:, None].contiguous(), lp[:, None].contiguous() if old_logp is None else col(old_logp, a, b), adv[a:b],
            every, token_weight[a:b],
            col(ref_logp, a, b), ent[:, None].contiguous(), c.opts)
        logp[a:b], entropy[a:b], loss_tok[a:b], ratio[a:b] = lp, ent, loss_s[:, 0], ratio_s[:, 0]
        if driver.wants_grads:
            c.logprob_kernels.rows_backward(z, local[a:b], c.temperature, c.ignore_index, lse, ent,
                                            g_logp[:, 0].contiguous(),
                                            g_ent[:, 0].contiguous() if c.opts.entropy_coef != 0 else None)

    driver.run(row_pass)
    return logp, entropy, loss_tok, ratio


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


def _sequence_level_one_pass(c: LinearPpoCall, driver: ChunkDriver, targets, groups):
    """GSPO when every chunk holds whole sequences: per chunk, the log-prob row pass gives each of
    its sequences' logp, the [B, T] terms kernel their gradients, and the gradient row pass turns
    the same logits (still in memory) into dloss/dlogits: 6 N H V FLOPs, as at token level."""
    B, T = c.valid.shape
    dtype, device = driver.dtype, c.valid.device
    logp, entropy, loss_tok = torch.zeros((3, B, T), dtype=dtype, device=device).unbind(0)
    ratio = torch.ones((B, T), dtype=dtype, device=device)
    seq_scale = ppo.aggregation_scale(c.valid, c.opts, dtype)
    span_of = {(r0, r1): (b0, b1) for b0, b1, r0, r1 in groups}

    def row_pass(z, r0, r1):
        b0, b1 = span_of[(r0, r1)]
        lp, lse, ent = torch.empty((3, r1 - r0), dtype=dtype, device=device).unbind(0)
        c.logprob_kernels.rows_forward(z, targets[r0:r1], c.temperature, c.ignore_index, lp, lse, ent)
        local = c.vrows.idx[r0:r1] - b0 * T  # the rows' places in the [b0:b1, T] slab
        logp[b0:b1].view(-1).index_copy_(0, local, lp)
        entropy[b0:b1].view(-1).index_copy_(0, local, ent)
        loss_s, g_logp, g_ent, ratio_s = c.ppo_kernels.terms(
            logp[b0:b1], logp[b0:b1] if c.old_logp is None else c.old_logp[b0:b1], c.advantages[b0:b1],
            c.valid[b0:b1], seq_scale[b0:b1],
            None if c.ref_logp is None else c.ref_logp[b0:b1], entropy[b0:b1], c.opts)
        loss_tok[b0:b1] = loss_s
        ratio[b0:b1] = ratio_s
        if driver.wants_grads:
            g_ent = g_ent.reshape(-1).index_select(0, local) if c.opts.entropy_coef != 0 else None
            c.logprob_kernels.rows_backward(z, targets[r0:r1], c.temperature, c.ignore_index, lse, ent,
                                            g_logp.reshape(-1).index_select(0, local), g_ent)

    driver.run(row_pass, spans=[(r0, r1) for _, _, r0, r1 in groups])
    loss = (loss_tok.sum(1) * seq_scale).sum()
    return loss, logp, entropy, ratio


def _sequence_level_two_phase(c: LinearPpoCall, hidden, weight, bias, targets, needs):
    """GSPO when a sequence is longer than a chunk (see the module docstring): stats pass over all
    chunks, [B, T] terms, gradient pass recomputing each chunk's logits: 8 N H V FLOPs."""
    B, T = c.valid.shape
    rp = c.logprob_call(targets)
    logp_v, lse_v, ent_v = chunked_forward(rp, hidden, weight, bias)
    logp = c.vrows.put(logp_v, 0.0, B * T).view(B, T)
    entropy = c.vrows.put(ent_v, 0.0, B * T).view(B, T)
    old = logp if c.old_logp is None else c.old_logp
    loss, g_logp, g_ent, ratio = ppo.loss_and_grads(c.ppo_kernels.terms, logp, old, c.advantages, c.valid,
                                                    c.ref_logp, entropy, c.opts)
    grads = (None, None, None)
    if any(needs):
        g_ent = c.vrows.take(g_ent.reshape(-1)) if c.opts.entropy_coef != 0 else None
        grads = chunked_backward(rp, hidden, weight, bias, lse_v, ent_v, c.vrows.take(g_logp.reshape(-1)), g_ent,
                                 needs)
    return loss, logp, entropy, ratio, grads


def _graph_is_kept() -> bool:
    """Will this backward's graph be used again? Unknown (older torch) counts as yes."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):
        return True


# PyTorch's own message for a graph whose saved values a first backward freed.
_SECOND_BACKWARD = (
    "Trying to backward through the graph a second time (or directly access saved tensors after they have "
    "already been freed). Saved intermediate values of the graph are freed when you call .backward() or "
    "autograd.grad(). Specify retain_graph=True if you need to backward through the graph a second time or "
    "if you need to access saved tensors after calling backward. (linear_ppo_loss hands its stored "
    "gradients to the first backward that does not retain the graph.)")


class LinearPpoLossFunction(torch.autograd.Function):
    """Differentiable in hidden [B * T, H], weight and bias; every gradient is made in forward.

    backward scales the stored gradients in place and hands them over (no second [V, H] buffer),
    unless the graph is being retained (retain_graph=True, gradcheck): then it scales a copy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, c: LinearPpoCall):
        needs = (c.want_grads and ctx.needs_input_grad[0], c.want_grads and ctx.needs_input_grad[1],
                 c.want_grads and bias is not None and ctx.needs_input_grad[2])
        B, T = c.valid.shape
        hidden_v, targets_v = c.vrows.take(hidden), c.vrows.take(c.targets)
        # Under a vocabulary-parallel head, GSPO takes the two-phase path (its per-chunk sequence terms
        # would need the combined statistics of whole sequences before any gradient row).
        groups = (_sequence_groups(c.vrows.lengths, c.rows)
                  if c.opts.importance == "sequence" and c.shard is None else None)
        if c.opts.importance == "sequence" and groups is None:
            loss, logp, entropy, ratio, grads = _sequence_level_two_phase(c, hidden_v, weight, bias, targets_v, needs)
        else:
            driver = ChunkDriver(hidden_v, weight, bias, c.rows, needs, c.transform)
            if c.opts.importance == "sequence":
                loss, logp, entropy, ratio = _sequence_level_one_pass(c, driver, targets_v, groups)
            else:
                seq_scale = ppo.aggregation_scale(c.valid, c.opts, driver.dtype)
                weight_bt = torch.where(c.valid, seq_scale[:, None], 0.0)
                if c.importance_weights is not None:  # a token's gradient is local to it: fold the weights in
                    weight_bt = weight_bt * c.importance_weights
                token_weight = c.vrows.take(weight_bt.reshape(-1))
                adv = c.advantages
                adv_tok = c.vrows.take((adv[:, None].expand(B, T) if adv.dim() == 1 else adv).reshape(-1)).contiguous()
                token_pass = _token_level_pass if c.shard is None else _token_level_pass_sharded
                logp, entropy, loss_tok, ratio = token_pass(
                    c, driver, targets_v, None if c.old_logp is None else c.vrows.take(c.old_logp.reshape(-1)), adv_tok,
                    None if c.ref_logp is None else c.vrows.take(c.ref_logp.reshape(-1)), token_weight)
                loss = (loss_tok * token_weight).sum()
                logp, entropy = c.vrows.put(logp, 0.0, B * T).view(B, T), c.vrows.put(entropy, 0.0, B * T).view(B, T)
                ratio = c.vrows.put(ratio, 1.0, B * T).view(B, T)
            grads = driver.grads()
            if c.shard is not None:  # every rank's block contributes to every token's hidden gradient
                c.shard.sum_over_ranks(grads[0])
        if grads[0] is not None:
            grads = (c.vrows.put(grads[0], 0.0, B * T), grads[1], grads[2])
        ctx.grads = grads
        ctx.mark_non_differentiable(logp, entropy, ratio)
        return loss, logp, entropy, ratio

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _g_logp, _g_entropy, _g_ratio):
        if ctx.grads is None:  # a previous backward without retain_graph handed them over
            raise RuntimeError(_SECOND_BACKWARD)
        if _graph_is_kept():
            scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads]
        else:
            grads, ctx.grads = ctx.grads, None
            scaled = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads]
        return (*scaled, None)


def _check_values(targets, valid, vocab, advantages, check_finite, opts: ppo.PpoOptions, dtype,
                  importance_weights) -> list:
    """Out-of-range targets would read out of bounds, and a tensor num_tokens / num_sequences that
    is not finite and > 0, or an importance weight that is negative or not finite on a valid token,
    would reverse or void the update: always rejected. NaN/inf advantages: when check_finite.
    Returns each sequence's number of valid tokens. One host sync for all of it."""
    out_of_range = valid & ((targets < 0) | (targets >= vocab))
    bad = out_of_range.any()
    for more in (ppo.invalid_normalisers(opts, valid.device, dtype),
                 ppo.invalid_importance_weights(importance_weights, valid)):
        if more is not None:
            bad = bad | more
    if check_finite:
        bad = bad | ppo.nonfinite_advantages(advantages, valid)
    host = torch.cat([bad.reshape(1).long(), valid.sum(1)]).tolist()
    if host[0]:  # the error path may sync again to say what is wrong
        if bool(out_of_range.any()):
            found = targets[out_of_range][0].item()
            raise ValueError(f"targets must lie in [0, {vocab}) on valid tokens (or equal ignore_index); found {found}")
        ppo.raise_invalid_normaliser(opts, dtype)
        ppo.raise_invalid_importance_weights(importance_weights, valid)
        ppo.raise_nonfinite_advantages(advantages, valid)
    return host[1:]


_OP = backends.register("linear_ppo_loss", {
    "torch": backends.Impl("ia_kernels.kernels.torch.ppo", FP32_FP64),
    "cpu": backends.Impl("ia_kernels.kernels.cpu.ppo", FP32),
    "triton": backends.Impl("ia_kernels.kernels.triton.ppo", FP32),
}, cuda_preference=("triton", "torch"))


def linear_ppo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    old_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor | None = None, *,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, ignore_index: int = -100,
                    ref_logp: torch.Tensor | None = None, clip_low: float = 0.2, clip_high: float | None = None,
                    dual_clip: float | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                    kl_times_ratio: bool = False, entropy_coef: float = 0.0, aggregation: str = "token-mean",
                    importance: str = "token", norm_length: int | None = None, num_tokens=None,
                    num_sequences=None, importance_weights: torch.Tensor | None = None,
                    logit_scale: float | None = None, softcap: float | None = None, check_finite: bool = True,
                    backend: str | None = None, chunk_size: int | None = None, tp_group=None):
    """The PPO loss of `ppo_loss` on the log-probs of `targets` under the LM head, fully fused.

    Equals `ppo_loss(linear_logprobs(hidden, weight, targets, ...), old_logp, advantages, mask,
    entropy=<the policy's entropy>, ...)` in value and gradients, without the [N, V] logits.

    Args:
        hidden: [B, T, H] final hidden states (fp32, bf16, fp16 or fp64).
        weight: [V, H] LM-head weight, same dtype as hidden, or fp32 with bf16/fp16 hidden (an LM
            head kept in fp32). bias: optional [V].
        targets: [B, T] integer token ids in [0, V) on valid tokens; `ignore_index` also masks a token.
        old_logp: [B, T], or None for on-policy: old_logp = the log-probs this same pass computes
            (ratio 1), so a single optimiser step per batch needs no extra no-grad pass.
        advantages, mask, ref_logp, importance_weights and the loss options (kl_times_ratio,
            aggregation with TRL's presets, norm_length, num_tokens, num_sequences): as in
            `ppo_loss`; the entropy is the policy's own (softmax(logits / temperature)), used by
            entropy_coef and metrics.
        temperature: logits are divided by it (> 0), as at sampling time.
        logit_scale, softcap: the model's logit transform, applied before the temperature:
            logits = softcap * tanh(logit_scale * z / softcap) (Cohere scales; Gemma soft-caps).
        check_finite: reject NaN/inf advantages. Either way the call makes one host sync, at
            validation: it checks the targets' range, a tensor num_tokens / num_sequences (finite
            and > 0) and the importance weights on valid tokens (finite and >= 0), each a
            ValueError otherwise, and counts each sequence's valid tokens, so that masked tokens
            are dropped before the GEMMs (padding costs no compute).
        backend: "torch", "cpu" or "triton"; None picks the fastest verified one for the device and
            dtype. cpu and triton compute in fp32: float64 inputs need "torch" (or None).
        chunk_size: rows of logits per chunk (None: IA_KERNELS_CHUNK_BYTES, 64 MiB on CPU).
        tp_group: a process group over which the LM head is sharded by vocabulary, as in
            `linear_logprobs` (or a DTensor weight placed Shard(0)). Every rank passes the same
            hidden states and per-token inputs and gets the same loss and metrics; the weight
            gradient is this rank's block's. Token level stays one pass (6 N H V over the ranks);
            GSPO takes the two-phase path (8 N H V).

    Returns:
        (loss, metrics) as `ppo_loss`, with `entropy_mean` always present. Gradients with respect
        to hidden, weight and bias are computed during this call; backward only scales them.
    """
    weight, bias, tp_group = resolve_lm_head(weight, bias, tp_group)

    def prepare() -> LocalCall:
        """This rank's validation: everything but the targets' range (the vocabulary may be sharded)."""
        opts = ppo.PpoOptions.from_kwargs(
            clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef, kl_estimator=kl_estimator,
            entropy_coef=entropy_coef, aggregation=aggregation, importance=importance, norm_length=norm_length,
            num_tokens=num_tokens, num_sequences=num_sequences, kl_times_ratio=kl_times_ratio)
        _checks.require_float("hidden", hidden)
        if hidden.dim() != 3:
            raise ValueError(f"hidden must have shape [B, T, H], got {tuple(hidden.shape)}")
        temp = validate_lm_head(hidden, weight, targets, bias, temperature)
        B, T, H = hidden.shape
        adv = ppo.validate_token_inputs((B, T), old_logp, advantages, mask, ref_logp, None, opts, importance_weights)
        device = _checks.require_same_device(hidden=hidden, old_logp=old_logp, advantages=adv, mask=mask,
                                             ref_logp=ref_logp, importance_weights=importance_weights)
        transform = LogitTransform.of(logit_scale, softcap, compute_dtype(weight.dtype))
        # Compared in int64, the dtype the kernels read (uint8 would wrap ignore_index=-100 to 156).
        ignore = _checks.require_index("ignore_index", ignore_index)
        chunk, chunk_bytes = chunk_setting(device, chunk_size)
        dtype = compute_dtype(weight.dtype)
        opts.check_range(dtype)
        name, ppo_kernels = _OP.select(device, dtype, backend)
        t64 = targets.to(torch.int64)
        valid = t64 != ignore
        if mask is not None:
            valid = valid & (mask != 0)
        valid = valid.contiguous()
        entries = dict(op=2, H=H, B=B, T=T, tokens=B * T, valid_tokens=valid.sum(), chunk_size=chunk,
                       targets=targets_checksum(t64, valid) if tp_group is not None else None,
                       chunk_bytes=chunk_bytes, float64=dtype == torch.float64,
                       hidden_grad=torch.is_grad_enabled() and hidden.requires_grad,
                       sequence_level=opts.importance == "sequence", temperature=temp, ignore_index=ignore,
                       logit_scale=None if transform is None else transform.scale,
                       softcap=None if transform is None else transform.softcap)
        flags = None
        if tp_group is not None:  # the value checks of _check_values, as bits the gather carries
            flags = torch.zeros((), dtype=torch.int64, device=device)
            bad_norm = ppo.invalid_normalisers(opts, device, dtype)
            if bad_norm is not None:
                flags = flags + bad_norm.to(torch.int64) * FLAG_NORMALISER
            bad_iw = ppo.invalid_importance_weights(importance_weights, valid)
            if bad_iw is not None:
                flags = flags + bad_iw.to(torch.int64) * FLAG_IMPORTANCE_WEIGHTS
            if check_finite:
                flags = flags + ppo.nonfinite_advantages(adv, valid).to(torch.int64) * FLAG_ADVANTAGES

        def explain(_flags):
            ppo.raise_invalid_normaliser(opts, dtype)
            ppo.raise_invalid_importance_weights(importance_weights, valid)
            ppo.raise_nonfinite_advantages(adv, valid)

        return LocalCall(weight.shape[0], entries, (opts, temp, adv, device, transform, ignore, dtype, name,
                                                    ppo_kernels, t64, valid),
                         targets=t64.reshape(-1), read=valid.reshape(-1), flags=flags, explain=explain)

    if tp_group is None:
        shard, prepared = None, prepare().result
    else:  # every rank validates, then one all-gather: the ranks raise together or run together
        shard, prepared = VocabShard.agree(tp_group, hidden.device if isinstance(hidden, torch.Tensor) else None,
                                           prepare)
    opts, temperature, advantages, device, transform, ignore_index, dtype, name, ppo_kernels, targets, valid = prepared
    B, T, H = hidden.shape
    vocab = weight.shape[0] if shard is None else shard.total
    lengths = _check_values(targets, valid, vocab, advantages, check_finite, opts, dtype, importance_weights)

    h2 = hidden.reshape(B * T, H)
    h2 = h2 if h2.is_contiguous() else h2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    call = LinearPpoCall(
        targets=torch.where(valid, targets, ignore_index).reshape(-1).contiguous(), old_logp=as_compute(old_logp, dtype),
        advantages=as_compute(advantages, dtype), importance_weights=as_compute(importance_weights, dtype),
        ref_logp=as_compute(ref_logp, dtype),
        valid=valid, vrows=ValidRows.of(valid, lengths),
        temperature=temperature, ignore_index=ignore_index, opts=opts, ppo_kernels=ppo_kernels,
        logprob_kernels=backends.kernel_module("linear_logprobs", name),  # the same backend's row passes
        rows=chunk_rows(B * T, vocab, device, chunk_size), want_grads=torch.is_grad_enabled(), shard=shard,
        transform=transform)
    loss, logp, entropy, ratio = LinearPpoLossFunction.apply(h2, w, bias, call)
    metrics = ppo.ppo_metrics(ratio, logp, logp if call.old_logp is None else call.old_logp, call.advantages, valid,
                              opts, entropy=entropy, ref_logp=call.ref_logp)
    return loss, metrics

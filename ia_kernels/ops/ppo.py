"""ppo_loss: the clipped PPO / GRPO / DAPO / GSPO / Dr. GRPO policy loss, with its gradient computed in forward.

Definitions: ia_kernels/reference/ppo.py (float64, autograd) and csrc/include/ia/ppo.h (per token).

Layers: per-token kernels (`terms` in kernels/<backend>/ppo.py: torch, cpu, triton) ->
`loss_and_grads` (aggregation weights, kernel call, loss sum) -> autograd Function
(`PpoLossFunction`, whose backward only scales the stored gradients) -> public `ppo_loss`.

The aggregation folds into one weight per sequence, `seq_scale[b]`, so the loss is
sum over valid tokens of seq_scale[b] * L_bt; every token's gradient is then final when the kernel
writes it. Nothing here synchronises with the host except the optional check of the advantages'
finiteness and of tensor normalisers (`check_finite=True`, one sync on a [B] or [B, T] tensor, at
validation). A tensor num_tokens / num_sequences is also guarded on the device: one that is not
finite and > 0 makes the loss NaN (never a reversed or silently zero update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import backends
from ..core import checks as _checks
from ..core.kl import kl_terms
from ..core.numerics import FP32, FP32_FP64, KL_ESTIMATOR_CODES, MAX_LOG_RATIO, as_compute, compute_dtype

# Exact caps of the clip settings (see PpoOptions.from_kwargs): 1 + _CLIP_HIGH_CAP exceeds e^20, the
# largest ratio, and _DUAL_CLIP_CAP exceeds the largest clipped surrogate slope 1 + _CLIP_HIGH_CAP.
_CLIP_HIGH_CAP, _DUAL_CLIP_CAP = 1e9, 4e9

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# TRL's loss_type names: (the aggregation it is, whether empty sequences count in its sequence mean).
# TRL divides its sequence means by the batch size B; ia_kernels' own names count only the
# sequences that have a valid token (verl's convention).
TRL_PRESETS = {
    "grpo": ("seq-mean-token-mean", True),
    "bnpo": ("token-mean", False),
    "dr_grpo": ("seq-mean-token-sum-norm", True),
    "dapo": ("token-mean", False),
    "luspo": ("seq-mean-token-sum", True),
}
IMPORTANCE_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class PpoOptions:
    """The loss's hyperparameters, validated (see `ppo_loss` for their meaning)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    aggregation: str = "token-mean"
    importance: str = "token"
    norm_length: int | None = None
    num_tokens: float | torch.Tensor | None = None  # explicit denominators (e.g. global counts under
    num_sequences: float | torch.Tensor | None = None  # data parallelism), see aggregation_scale
    kl_times_ratio: bool = False

    @property
    def base_aggregation(self) -> str:
        """The aggregation itself, TRL's preset names resolved."""
        return TRL_PRESETS.get(self.aggregation, (self.aggregation, False))[0]

    @property
    def counts_empty_sequences(self) -> bool:
        return TRL_PRESETS.get(self.aggregation, (self.aggregation, False))[1]

    @classmethod
    def from_kwargs(cls, *, clip_low=0.2, clip_high=None, dual_clip=None, kl_coef=0.0, kl_estimator="k3",
                    entropy_coef=0.0, aggregation="token-mean", importance="token", norm_length=None,
                    num_tokens=None, num_sequences=None, kl_times_ratio=False) -> "PpoOptions":
        clip_low = _checks.require_positive_finite("clip_low", clip_low)
        clip_high = clip_low if clip_high is None else _checks.require_positive_finite("clip_high", clip_high)
        if dual_clip is not None:
            dual_clip = _checks.require_positive_finite("dual_clip", dual_clip)
            if dual_clip <= 1.0:
                raise ValueError(f"dual_clip must be > 1 (it bounds the loss of negative advantages at "
                                 f"-advantage * dual_clip), got {dual_clip}")
        kl_coef = _checks.require_finite_number("kl_coef", kl_coef)
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        entropy_coef = _checks.require_finite_number("entropy_coef", entropy_coef)
        if not isinstance(kl_estimator, str) or kl_estimator not in KL_ESTIMATOR_CODES:
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATOR_CODES)}, got {kl_estimator!r}")
        if not isinstance(aggregation, str) or (aggregation not in AGGREGATIONS and aggregation not in TRL_PRESETS):
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)} or TRL's loss types "
                             f"{', '.join(TRL_PRESETS)}; got {aggregation!r}")
        base = TRL_PRESETS.get(aggregation, (aggregation, False))[0]
        if not isinstance(importance, str) or importance not in IMPORTANCE_LEVELS:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCE_LEVELS)}, got {importance!r}")
        if norm_length is not None:
            norm_length = _checks.require_index("norm_length", norm_length)
            if norm_length < 1:
                raise ValueError(f"norm_length must be an int >= 1, got {norm_length!r}")
            if base == "seq-mean-token-sum":
                raise ValueError(f"norm_length replaces a sequence's token count, and aggregation={aggregation!r} "
                                 f"divides by none (it sums each sequence's tokens)")
            if num_tokens is not None:
                raise ValueError("norm_length and num_tokens both set the token-mean's denominator; pass one")
        if num_tokens is not None:
            if base != "token-mean":
                raise ValueError(f"num_tokens is the denominator of a token mean; aggregation={aggregation!r} "
                                 f"divides by sequences (use num_sequences)")
            num_tokens = _positive_count("num_tokens", num_tokens)
        if num_sequences is not None:
            if base == "token-mean":
                raise ValueError(f"num_sequences is the denominator of a sequence mean; aggregation={aggregation!r} "
                                 f"divides by tokens (use num_tokens)")
            num_sequences = _positive_count("num_sequences", num_sequences)
        if not isinstance(kl_times_ratio, bool):
            raise ValueError(f"kl_times_ratio must be a bool, got {kl_times_ratio!r}")
        # Clip values past these change nothing (the ratio is exp of a log ratio clamped to +-20, so
        # it lies in [e^-20, e^20]): they are capped, so that "no clipping" written as a huge number
        # runs the same on every backend instead of overflowing float32 (1 + 1e300).
        clip_low, clip_high = min(clip_low, 1.0), min(clip_high, _CLIP_HIGH_CAP)
        dual_clip = None if dual_clip is None else min(dual_clip, _DUAL_CLIP_CAP)
        return cls(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, aggregation, importance,
                   norm_length, num_tokens, num_sequences, kl_times_ratio)

    def check_range(self, dtype: torch.dtype) -> None:
        """The settings a float32 kernel reads must be float32 numbers (checks.require_float32_range):
        the coefficients, and the numbers the loss is divided by."""
        _checks.require_float32_range("kl_coef", self.kl_coef, dtype)
        _checks.require_float32_range("entropy_coef", self.entropy_coef, dtype)
        for name in NORMALISERS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                _checks.require_float32_range(name, value, dtype, reciprocal=True, why=" (the loss is divided by it)")


def _positive_count(name: str, value):
    """A normaliser: a positive finite number, or a one-element real tensor, kept as a 0-d tensor
    so that reading it costs no host sync (trainers pass global counts on the GPU). A tensor's
    value is checked later: in the call's one host sync when it makes one (`normaliser_problem`),
    and always on the device, where an invalid one turns the loss into NaN (`aggregation_scale`)."""
    if isinstance(value, torch.Tensor):
        _checks.require_tensor(name, value)
        if value.numel() != 1 or not (value.dtype.is_floating_point or value.dtype in _checks.INT_DTYPES) \
                or value.device.type == "meta":
            raise ValueError(f"{name} must be a positive number or a one-element tensor of a real dtype, got a {value.dtype} "
                             f"tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    return _checks.require_positive_finite(name, value)


NORMALISERS = ("num_tokens", "num_sequences")


def _tensor_normalisers(opts: PpoOptions) -> dict:
    return {name: getattr(opts, name) for name in NORMALISERS if isinstance(getattr(opts, name), torch.Tensor)}


def _invalid_count(x: torch.Tensor) -> torch.Tensor:
    """0-d bool, no sync: is a count not a finite number > 0? (NaN fails too)."""
    return ~(x > 0) | ~torch.isfinite(x)


def invalid_normalisers(opts: PpoOptions, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """0-d bool tensor on `device` (no host sync): is a tensor num_tokens / num_sequences, as the
    loss reads it (in the compute dtype), not a finite number > 0? None when neither is a tensor
    (numbers were checked in from_kwargs and check_range)."""
    counts = _tensor_normalisers(opts)
    if not counts:
        return None
    bad = [_invalid_count(x.to(device=device, dtype=dtype)) for x in counts.values()]
    return torch.stack(bad).any()


def raise_invalid_normaliser(opts: PpoOptions, dtype: torch.dtype) -> None:
    """The ValueError for the first invalid tensor normaliser (syncs to read it); None if all are valid."""
    for name, x in _tensor_normalisers(opts).items():
        if bool(_invalid_count(x.to(dtype))):
            raise ValueError(f"{name} must be finite and > 0, got {x.item()} (a tensor, read as {x.to(dtype).item()} "
                             f"in {str(dtype).replace('torch.', '')}): a negative count would flip the loss's sign "
                             f"and zero would divide by zero")


# ---------------------------------------------------------------------------------------------
# Validation shared with linear_ppo_loss


def validate_token_inputs(shape, old_logp, advantages, mask, ref_logp, entropy, opts: PpoOptions,
                          importance_weights=None) -> torch.Tensor:
    """Checks the per-token tensors against the [B, T] token grid `shape` (no host sync); returns the
    advantages as [B] or [B, T] ([B, 1] is one per sequence). old_logp None means on-policy."""
    B, T = shape
    if old_logp is not None:
        _checks.require_float("old_logp", old_logp)
        _checks.require_shape("old_logp", old_logp, (B, T), "[B, T] like logp, or None for on-policy")
    _checks.require_float("advantages", advantages)
    if tuple(advantages.shape) == (B, 1) and T != 1:
        advantages = advantages.reshape(B)
    if tuple(advantages.shape) not in ((B,), (B, T)):
        raise ValueError(f"advantages must have shape ({B},) or ({B}, 1) (one per sequence) or ({B}, {T}) "
                         f"(one per token), got {tuple(advantages.shape)}")
    if importance_weights is not None:
        _checks.require_float("importance_weights", importance_weights)
        _checks.require_shape("importance_weights", importance_weights, (B, T), "[B, T]: a constant weight per token")
        if opts.importance == "sequence":
            raise ValueError("importance_weights weight each token's loss at importance='token'; under GSPO "
                             "(importance='sequence') a token's gradient depends on its whole sequence")
    if mask is not None:
        _checks.require_tensor("mask", mask)
        _checks.require_shape("mask", mask, (B, T), "[B, T]: true on the tokens that count")
    if ref_logp is not None:
        _checks.require_float("ref_logp", ref_logp)
        _checks.require_shape("ref_logp", ref_logp, (B, T), "[B, T] like logp")
    elif opts.kl_coef != 0:
        raise ValueError(f"kl_coef={opts.kl_coef} needs ref_logp (the reference policy's log-probs)")
    if entropy is not None:
        _checks.require_float("entropy", entropy)
        _checks.require_shape("entropy", entropy, (B, T), "[B, T] like logp")
    return advantages


def nonfinite_advantages(advantages, valid) -> torch.Tensor:
    """Boolean tensor: does an advantage that some valid token uses hold NaN or inf (no sync)?"""
    used = valid.any(1) if advantages.dim() == 1 else valid
    return (used & ~torch.isfinite(advantages)).any()


def invalid_importance_weights(importance_weights, valid) -> torch.Tensor | None:
    """0-d bool (no sync): does a valid token's importance weight fall outside [0, inf)? A negative
    weight reverses that token's update, NaN or inf voids the loss. None without weights."""
    if importance_weights is None:
        return None
    iw = importance_weights
    return (valid & ~(torch.isfinite(iw) & (iw >= 0))).any()


def raise_invalid_importance_weights(importance_weights, valid) -> None:
    if importance_weights is None:
        return
    bad = valid & ~(torch.isfinite(importance_weights) & (importance_weights >= 0))
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(f"importance_weights must be finite and >= 0 on valid tokens (importance-sampling "
                         f"ratios; a negative weight would reverse that token's update): found "
                         f"{importance_weights[tuple(where)].item()} at index {tuple(where)}")


def guarded_importance_weights(importance_weights, valid):
    """The weights as the loss reads them: 0 off the mask; NaN where a valid token's weight is
    negative or not finite, so that without the check's host sync such a weight makes the loss
    NaN instead of reversing an update."""
    ok = torch.isfinite(importance_weights) & (importance_weights >= 0)
    return torch.where(valid, torch.where(ok, importance_weights, float("nan")), 0.0)


def raise_nonfinite_advantages(advantages, valid) -> None:
    used = valid.any(1) if advantages.dim() == 1 else valid
    where = (used & ~torch.isfinite(advantages)).nonzero()[0].tolist()
    raise ValueError(f"advantages must be finite on valid tokens: found NaN or inf at index {tuple(where)} "
                     f"(pass check_finite=False to skip this check and its host sync)")


# ---------------------------------------------------------------------------------------------
# Aggregation and metrics


def aggregation_scale(valid: torch.Tensor, opts: PpoOptions, dtype: torch.dtype) -> torch.Tensor:
    """seq_scale [B]: the weight of each valid token of sequence b in the loss (tensor maths, no sync).

    The denominators: a token mean divides by num_tokens, else by the valid tokens (or, with
    norm_length, by norm_length per sequence that has one); a sequence mean divides by
    num_sequences, else by the sequences that have a valid token (verl's convention) — or by the
    batch size B under TRL's preset names. norm_length replaces a sequence's own token count.
    """
    B, T = valid.shape
    seq_tokens = valid.sum(1).to(dtype)
    nonempty = (seq_tokens > 0).sum().clamp(min=1).to(dtype)
    if opts.num_sequences is not None:
        n_seqs = _guarded_count(opts.num_sequences, dtype, valid.device)
    elif opts.counts_empty_sequences:
        n_seqs = torch.tensor(float(max(B, 1)), dtype=dtype, device=valid.device)
    else:
        n_seqs = nonempty
    base = opts.base_aggregation
    if base == "token-mean":
        if opts.num_tokens is not None:
            denom = _guarded_count(opts.num_tokens, dtype, valid.device)
        elif opts.norm_length is not None:
            denom = nonempty * opts.norm_length
        else:
            denom = seq_tokens.sum().clamp(min=1)
        return (1.0 / denom).expand(B).contiguous()
    if base == "seq-mean-token-sum":
        return (1.0 / n_seqs).expand(B).contiguous()
    if base == "seq-mean-token-mean" and opts.norm_length is None:
        return 1.0 / (seq_tokens.clamp(min=1) * n_seqs)
    norm = T if opts.norm_length is None else opts.norm_length
    return (1.0 / (n_seqs * max(norm, 1))).expand(B).contiguous()


def _guarded_count(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A normaliser as a 0-d tensor; a tensor one that is not finite and > 0 becomes NaN, on the
    device (no host sync), so that the loss and every gradient are NaN rather than silently
    reversed (a negative count) or meaningless: a call without a host sync cannot raise."""
    x = torch.as_tensor(value, dtype=dtype, device=device)
    if isinstance(value, torch.Tensor):
        x = torch.where(_invalid_count(x), torch.full_like(x, float("nan")), x)
    return x


@torch.no_grad()
def ppo_metrics(ratio, logp, old_logp, advantages, valid, opts: PpoOptions, *, entropy=None, ref_logp=None) -> dict:
    """0-d tensors, means over valid tokens (no host sync):
    clip_frac_low / clip_frac_high: fraction of tokens whose ratio was clipped below (a < 0) / above (a > 0);
    clip_frac_dual: fraction with a < 0 and ratio > dual_clip (0 without dual clip);
    approx_kl: KL(old || new) by Schulman's k3 on per-token ratios, mean of (r - 1) - log r;
    ratio_mean / ratio_min / ratio_max: of the ratio the loss used (the sequence ratio under GSPO);
    entropy_mean (when entropy is known); kl_ref: mean of the chosen estimator against ref_logp (when given).
    """
    dtype = ratio.dtype
    B, T = valid.shape
    adv = advantages[:, None].expand(B, T) if advantages.dim() == 1 else advantages
    zero = torch.zeros((), dtype=dtype, device=ratio.device)
    count = valid.sum()
    denom = count.clamp(min=1).to(dtype)

    def mean(x):
        return torch.where(valid, x.to(dtype), zero).sum() / denom

    lo, hi = 1.0 - opts.clip_low, 1.0 + opts.clip_high
    log_ratio = torch.where(valid, logp - old_logp, zero).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    one = torch.ones((), dtype=dtype, device=ratio.device)
    out = {
        "clip_frac_low": mean((ratio < lo) & (adv < 0)),
        "clip_frac_high": mean((ratio > hi) & (adv > 0)),
        "clip_frac_dual": mean((ratio > opts.dual_clip) & (adv < 0)) if opts.dual_clip is not None else zero.clone(),
        "approx_kl": mean(torch.expm1(log_ratio) - log_ratio),
        "ratio_mean": mean(ratio),
        "ratio_min": _valid_extreme(torch.amin, ratio, valid, float("inf"), count, one),
        "ratio_max": _valid_extreme(torch.amax, ratio, valid, float("-inf"), count, one),
    }
    if entropy is not None:
        out["entropy_mean"] = mean(entropy)
    if ref_logp is not None:
        out["kl_ref"] = mean(kl_terms(torch.where(valid, logp, zero), torch.where(valid, ref_logp, zero),
                                       opts.kl_estimator)[0])
    return out


def _valid_extreme(reduce, x, valid, fill, count, empty_value):
    """min / max of x over valid tokens, empty_value when none is (B * T == 0 included; no sync)."""
    if valid.numel() == 0:  # a shape, known on the host
        return empty_value.clone()
    return torch.where(count > 0, reduce(torch.where(valid, x, fill)), empty_value)


def loss_and_grads(terms, logp, old_logp, advantages, valid, ref_logp, entropy, opts: PpoOptions,
                   importance_weights=None):
    """(loss, g_logp, g_entropy, ratio) for prepared inputs: contiguous tensors in one compute dtype
    (one the backend's `terms` serves), `valid` a contiguous bool [B, T]. Per-token importance
    weights (token-level importance only) scale each token's loss and, its gradient being local to
    the token, its gradients."""
    seq_scale = aggregation_scale(valid, opts, logp.dtype)
    loss_tok, g_logp, g_entropy, ratio = terms(logp, old_logp, advantages, valid, seq_scale, ref_logp, entropy, opts)
    if importance_weights is not None:
        iw = guarded_importance_weights(importance_weights, valid)
        loss_tok, g_logp, g_entropy = loss_tok * iw, g_logp * iw, g_entropy * iw
    # Off-mask loss terms are exactly 0, so a per-sequence sum then the scale is the weighted sum.
    loss = (loss_tok.sum(1) * seq_scale).sum()
    return loss, g_logp, g_entropy, ratio


class PpoLossFunction(torch.autograd.Function):
    """Differentiable in logp and entropy; the gradients are made in forward, backward scales them."""

    @staticmethod
    def forward(ctx, logp, entropy, old_logp, advantages, valid, ref_logp, opts, terms, importance_weights):
        dtype = compute_dtype(logp.dtype)
        lp = as_compute(logp, dtype)
        old = lp if old_logp is None else as_compute(old_logp, dtype)  # None: on-policy, old = logp.detach()
        loss, g_logp, g_entropy, ratio = loss_and_grads(
            terms, lp, old, as_compute(advantages, dtype), valid, as_compute(ref_logp, dtype),
            as_compute(entropy, dtype), opts, as_compute(importance_weights, dtype))
        ctx.save_for_backward(g_logp, g_entropy)
        ctx.dtypes = (logp.dtype, None if entropy is None else entropy.dtype)
        ctx.mark_non_differentiable(ratio)
        return loss, ratio

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_ratio):
        g_logp, g_entropy = ctx.saved_tensors
        logp_dtype, entropy_dtype = ctx.dtypes
        grad_logp = (g_logp * grad_loss).to(logp_dtype) if ctx.needs_input_grad[0] else None
        grad_entropy = (g_entropy * grad_loss).to(entropy_dtype) if ctx.needs_input_grad[1] else None
        return grad_logp, grad_entropy, None, None, None, None, None, None, None


_OP = backends.register("ppo_loss", {
    "torch": backends.Impl("ia_kernels.kernels.torch.ppo", FP32_FP64),
    "cpu": backends.Impl("ia_kernels.kernels.cpu.ppo", FP32),
    "triton": backends.Impl("ia_kernels.kernels.triton.ppo", FP32),
}, cuda_preference=("triton", "torch"))


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None,
             *, ref_logp: torch.Tensor | None = None, clip_low: float = 0.2, clip_high: float | None = None,
             dual_clip: float | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
             entropy: torch.Tensor | None = None, entropy_coef: float = 0.0, aggregation: str = "token-mean",
             importance: str = "token", norm_length: int | None = None, num_tokens=None, num_sequences=None,
             kl_times_ratio: bool = False, importance_weights: torch.Tensor | None = None,
             check_finite: bool = True, backend: str | None = None):
    """The clipped policy-gradient loss over a batch of B sequences of T tokens, and its metrics.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the policy being trained (differentiable).
        old_logp: [B, T] log-probs under the policy that sampled them (constant); None: on-policy
            (old_logp = logp.detach(): ratio 1, gradient of a plain policy gradient).
        advantages: [B] or [B, 1] per sequence (broadcast over its tokens) or [B, T] per token
            (constant).
        mask: [B, T], nonzero on the tokens that count; None: all of them. Masked tokens may hold
            anything (NaN included); fully masked sequences contribute nothing and produce no NaN.
        ref_logp: [B, T] reference-policy log-probs, for the KL penalty and the `kl_ref` metric.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high]; clip_high
            defaults to clip_low (DAPO's clip-higher sets it larger). Both > 0.
        dual_clip: c > 1: for negative advantages the loss is at most -advantage * c (dual-clip PPO).
        kl_coef, kl_estimator: adds kl_coef * KL estimate to each token: "k1" = l - l_ref,
            "k2" = (l - l_ref)^2 / 2, "k3" = exp(l_ref - l) - (l_ref - l) - 1 (Schulman; GRPO).
        kl_times_ratio: multiply each token's KL estimate by its importance ratio (differentiably,
            as TRL's use_bias_correction_kl): the KL of samples drawn from the old policy.
        entropy, entropy_coef: [B, T] entropies; each token's loss gets -entropy_coef * entropy.
        aggregation: "token-mean" (mean over valid tokens), "seq-mean-token-sum",
            "seq-mean-token-mean", or "seq-mean-token-sum-norm" (Dr. GRPO: each sequence's token
            sum divided by the constant norm_length, default T). Sequence means are over the
            sequences that have a valid token. TRL's loss_type names are presets: "grpo"
            (seq-mean-token-mean), "bnpo" and "dapo" (token-mean), "dr_grpo"
            (seq-mean-token-sum-norm), "luspo" (seq-mean-token-sum), their sequence means over
            all B sequences as TRL does.
        norm_length: replaces each sequence's token count by this constant in the denominators
            (Dr. GRPO; token-mean then divides by norm_length per sequence).
        num_tokens, num_sequences: explicit denominators of the token / sequence mean, finite and
            > 0: numbers, or one-element tensors (e.g. global counts under data parallelism, on the
            GPU, or TRL's num_items_in_batch), which are read without a host sync of their own: with
            check_finite=True an invalid tensor (<= 0, NaN, inf) is a ValueError raised in that
            check's one sync; with check_finite=False it makes the loss and every gradient NaN.
        importance_weights: [B, T] constant per-token weights on each token's loss (rollout
            correction, e.g. vLLM's importance-sampling ratio); token-level importance only.
            Finite and >= 0 on valid tokens: with check_finite=True a ValueError otherwise; with
            check_finite=False such a weight makes the loss NaN (never a reversed update).
        importance: "token" (one ratio per token) or "sequence" (GSPO: one ratio per sequence,
            exp of the mean log-ratio of its valid tokens; each token's gradient is
            ratio / |y| * grad logp times the sequence's surrogate slope).
        check_finite: reject NaN/inf advantages on valid tokens, importance weights that are
            negative or not finite there, and a tensor num_tokens / num_sequences that is not
            finite and > 0, with a ValueError (one host sync); False skips the check, leaving the
            call free of host synchronisation.
        backend: "torch", "cpu" or "triton"; None picks the fastest verified one for the device and
            dtype. cpu and triton compute in fp32: float64 logp needs "torch" (or None).

    Returns:
        (loss, metrics): loss a 0-d fp32 tensor (float64 for float64 logp); metrics a dict of
        detached 0-d tensors, described in `ppo_metrics`. Log ratios and the k3 exponent are
        clamped to +-20 (as verl) so that exp stays finite.
    """
    opts = PpoOptions.from_kwargs(clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef,
                                  kl_estimator=kl_estimator, entropy_coef=entropy_coef, aggregation=aggregation,
                                  importance=importance, norm_length=norm_length, num_tokens=num_tokens,
                                  num_sequences=num_sequences, kl_times_ratio=kl_times_ratio)
    _checks.require_float("logp", logp)
    if logp.dim() != 2:
        raise ValueError(f"logp must have shape [B, T], got {tuple(logp.shape)}")
    advantages = validate_token_inputs(logp.shape, old_logp, advantages, mask, ref_logp, entropy, opts,
                                       importance_weights)
    if opts.entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={opts.entropy_coef} needs entropy (the [B, T] per-token entropies)")
    device = _checks.require_same_device(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask,
                                         ref_logp=ref_logp, entropy=entropy, importance_weights=importance_weights)
    valid = (torch.ones(logp.shape, dtype=torch.bool, device=device) if mask is None
             else (mask != 0).contiguous())
    dtype = compute_dtype(logp.dtype)
    opts.check_range(dtype)
    if check_finite:  # one host sync for the advantages, normalisers and importance weights together
        bad = nonfinite_advantages(advantages, valid)
        for more in (invalid_normalisers(opts, device, dtype), invalid_importance_weights(importance_weights, valid)):
            bad = bad if more is None else bad | more
        if bool(bad):
            raise_invalid_normaliser(opts, dtype)
            raise_invalid_importance_weights(importance_weights, valid)
            raise_nonfinite_advantages(advantages, valid)
    _, kernels = _OP.select(device, dtype, backend)
    loss, ratio = PpoLossFunction.apply(logp, entropy, old_logp, advantages, valid, ref_logp, opts, kernels.terms,
                                        importance_weights)
    old = logp if old_logp is None else old_logp
    metrics = ppo_metrics(ratio, logp.detach().to(dtype), old.detach().to(dtype), advantages.detach().to(dtype),
                          valid, opts, entropy=None if entropy is None else entropy.detach().to(dtype),
                          ref_logp=None if ref_logp is None else ref_logp.detach().to(dtype))
    return loss, metrics

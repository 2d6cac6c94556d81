"""Reference of the clipped PPO loss and the fused linear PPO loss, run in float64 by tests.

Written for clarity, with autograd supplying every gradient: this is the definition the kernels
(ia_kernels/kernels/<backend>/ppo.py, csrc/include/ia/ppo.h) must match.

Per valid token (mask true) with log-prob l, behaviour log-prob l_old, advantage a:
    r   = exp(clamp(l - l_old, -20, 20))                     importance="token"
    r_b = exp(clamp(mean over b's valid tokens of (l - l_old), -20, 20))
                                                            importance="sequence" (GSPO), every
                                                            token of sequence b uses r_b
    pg  = max(-a r, -a clamp(r, 1 - clip_low, 1 + clip_high));  if a < 0 and dual_clip c:
          pg = min(pg, -a c)
    L   = pg + kl_coef * kl(l, l_ref) - entropy_coef * entropy
    kl: k1 = l - l_ref; k2 = (l - l_ref)^2 / 2; k3 = exp(d) - d - 1, d = clamp(l_ref - l, -20, 20)
    with kl_times_ratio the KL term is kl_coef * kl * r (r differentiable); importance_weights
    multiply each token's L (constants); old_logp None means old_logp = logp.detach().
The loss aggregates L over valid tokens; S is the number of sequences with a valid token (or
num_sequences; or B for TRL's preset names), N the number of valid tokens (or num_tokens), n_b the
valid tokens of sequence b (or norm_length, when given):
    token-mean               sum L / N         (with norm_length: sum L / (S' norm_length), S' = nonempty)
    seq-mean-token-sum       (1/S) sum_b sum_t L
    seq-mean-token-mean      (1/S) sum_b sum_t L / n_b
    seq-mean-token-sum-norm  (1/S) sum_b sum_t L / norm_length      (Dr. GRPO; norm_length = T)
    TRL's presets: grpo = seq-mean-token-mean, bnpo = dapo = token-mean, dr_grpo =
    seq-mean-token-sum-norm, luspo = seq-mean-token-sum, each with S = B.
Masked tokens and fully masked sequences contribute nothing, to sums or to counts.
"""

from __future__ import annotations

import torch

from .logprobs import linear_logprobs

MAX_LOG_RATIO = 20.0


def _kl(logp, ref_logp, estimator):
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    d = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(d) - d - 1


PRESETS = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
           "dapo": "token-mean", "luspo": "seq-mean-token-sum"}


def ppo_loss(logp, old_logp, advantages, mask=None, *, ref_logp=None, clip_low=0.2, clip_high=None,
             dual_clip=None, kl_coef=0.0, kl_estimator="k3", entropy=None, entropy_coef=0.0,
             aggregation="token-mean", importance="token", norm_length=None, num_tokens=None, num_sequences=None,
             kl_times_ratio=False, importance_weights=None, dtype=torch.float64):
    """(loss, metrics) computed in `dtype`; loss is differentiable w.r.t. logp and entropy by autograd."""
    B, T = logp.shape
    clip_high = clip_low if clip_high is None else clip_high
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    if old_logp is None:
        old_logp = logp.detach()
    logp, old_logp, ref_logp, entropy = cast(logp), cast(old_logp), cast(ref_logp), cast(entropy)
    adv = advantages.to(dtype)
    if adv.dim() == 2 and adv.shape[1] == 1:
        adv = adv[:, 0]
    if adv.dim() == 1:
        adv = adv[:, None].expand(B, T)
    valid = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    # Zero the padding first so that whatever it holds (NaN included) cannot leak into sums.
    zero = torch.zeros((), dtype=dtype)
    logp_v = torch.where(valid, logp, zero)
    old_v = torch.where(valid, old_logp, zero)
    adv = torch.where(valid, adv, zero)

    log_ratio = logp_v - old_v
    if importance == "sequence":
        counts = valid.sum(1).clamp(min=1).to(dtype)
        log_ratio = (log_ratio.sum(1) / counts)[:, None].expand(B, T)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
    pg = torch.maximum(-adv * ratio, -adv * clipped)
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    loss_tok = pg
    if kl_coef:
        kl = _kl(logp_v, torch.where(valid, ref_logp, zero), kl_estimator)
        loss_tok = loss_tok + kl_coef * (kl * ratio if kl_times_ratio else kl)
    if entropy_coef:
        loss_tok = loss_tok - entropy_coef * torch.where(valid, entropy, zero)
    if importance_weights is not None:
        loss_tok = loss_tok * importance_weights.to(dtype)
    loss_tok = torch.where(valid, loss_tok, zero)

    n_tokens = valid.sum()
    seq_tokens = valid.sum(1)
    nonempty = (seq_tokens > 0).sum().clamp(min=1)
    base = PRESETS.get(aggregation, aggregation)
    n_seqs = num_sequences if num_sequences is not None else B if aggregation in PRESETS else nonempty
    if base == "token-mean":
        denom = (num_tokens if num_tokens is not None else nonempty * norm_length if norm_length is not None
                 else n_tokens.clamp(min=1))
        loss = loss_tok.sum() / denom
    elif base == "seq-mean-token-sum":
        loss = loss_tok.sum(1).sum() / n_seqs
    elif base == "seq-mean-token-mean":
        per_seq = seq_tokens.clamp(min=1) if norm_length is None else norm_length
        loss = (loss_tok.sum(1) / per_seq).sum() / n_seqs
    elif base == "seq-mean-token-sum-norm":
        loss = loss_tok.sum(1).sum() / (n_seqs * (T if norm_length is None else norm_length))
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")

    with torch.no_grad():
        def token_mean(x):
            return torch.where(valid, x, zero).sum() / n_tokens.clamp(min=1)

        r = ratio.detach()
        token_log_ratio = (logp_v - old_v).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        metrics = {
            "clip_frac_low": token_mean(((r < 1 - clip_low) & (adv < 0)).to(dtype)),
            "clip_frac_high": token_mean(((r > 1 + clip_high) & (adv > 0)).to(dtype)),
            "clip_frac_dual": token_mean(((r > dual_clip) & (adv < 0)).to(dtype)) if dual_clip is not None
            else torch.zeros((), dtype=dtype),
            # KL(old || new) by Schulman's k3 with x ~ old: (r - 1) - log r, per-token ratios
            # (whatever the importance level), log r clamped as above.
            "approx_kl": token_mean(torch.expm1(token_log_ratio) - token_log_ratio),
            "ratio_mean": token_mean(r),
            "ratio_min": torch.where(valid, r, torch.full((), float("inf"), dtype=dtype)).min()
            if valid.any() else torch.ones((), dtype=dtype),
            "ratio_max": torch.where(valid, r, torch.full((), float("-inf"), dtype=dtype)).max()
            if valid.any() else torch.ones((), dtype=dtype),
        }
        if entropy is not None:
            metrics["entropy_mean"] = token_mean(torch.where(valid, entropy, zero))
        if ref_logp is not None:
            metrics["kl_ref"] = token_mean(_kl(logp_v, torch.where(valid, ref_logp, zero), kl_estimator))
    return loss, metrics


def linear_ppo_loss(hidden, weight, targets, old_logp, advantages, mask=None, *, bias=None, temperature=1.0,
                    ignore_index=-100, logit_scale=None, softcap=None, dtype=torch.float64, **options):
    """ppo_loss of the log-probs and entropies of `targets` under the LM head, all in `dtype`.

    Tokens whose target is `ignore_index` are masked as well as those where `mask` is false.
    """
    valid = targets != ignore_index
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    logp, entropy = linear_logprobs(hidden, weight, torch.where(valid, targets, ignore_index), bias=bias,
                                    temperature=temperature, ignore_index=ignore_index, return_entropy=True,
                                    logit_scale=logit_scale, softcap=softcap, dtype=dtype)
    return ppo_loss(logp, old_logp, advantages, valid, entropy=entropy, dtype=dtype, **options)

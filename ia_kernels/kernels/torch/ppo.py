"""The torch backend of the PPO loss: the per-token terms over [B, T] and the fused linear-PPO row pass.

Every backend's ppo module offers the same two functions:
  terms(logp, old_logp, adv, valid, seq_scale, ref_logp, entropy, opts)
      -> (loss [B, T] unweighted L, g_logp = w dL/dl, g_entropy = w dL/dh, ratio), 0/0/0/1 off the mask;
  fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
             logp, entropy, loss, ratio)
      the token-level row pass of linear_ppo_loss over a chunk of logits: writes the four [rows]
      outputs and overwrites z with dloss/dlogits (ignored rows: zero outputs, ratio 1, zero row).
The per-token maths is defined in csrc/include/ia/ppo.h (float64 reference: ia_kernels/reference/ppo.py).
NaN propagates through every clamp and max (torch.clamp / torch.maximum keep NaN).
"""

from __future__ import annotations

import torch

from ...core.kl import kl_terms
from ...core.numerics import MAX_LOG_RATIO
from . import logprobs


def clipped_surrogate(ratio, adv, opts):
    """(loss, dloss/dratio) of ia::clipped_surrogate, elementwise."""
    lo, hi = 1.0 - opts.clip_low, 1.0 + opts.clip_high
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))
    clip_active = ((adv > 0) & (ratio > hi)) | ((adv < 0) & (ratio < lo))
    grad = torch.where(clip_active, 0.0, -adv)
    if opts.dual_clip is not None:
        bound = -adv * opts.dual_clip
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        grad = torch.where(dual, 0.0, grad)
    return loss, grad


def terms(logp, old_logp, adv, valid, seq_scale, ref_logp, entropy, opts):
    B, T = logp.shape
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = adv[:, None].expand(B, T) if adv.dim() == 1 else adv
    adv = torch.where(valid, adv, zero)
    w = torch.where(valid, seq_scale[:, None], zero)
    logp_v = torch.where(valid, logp, zero)
    log_ratio = logp_v - torch.where(valid, old_logp, zero)
    if opts.importance == "sequence":
        counts = valid.sum(1).clamp(min=1).to(logp.dtype)
        log_ratio = (log_ratio.sum(1) / counts)[:, None].expand(B, T)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    dratio = torch.where(log_ratio.abs() > MAX_LOG_RATIO, 0.0, ratio)
    loss, dloss_dratio = clipped_surrogate(ratio, adv, opts)
    kl = dkl = None
    if opts.kl_coef != 0:
        kl, dkl = kl_terms(logp_v, torch.where(valid, ref_logp, zero), opts.kl_estimator)
        if opts.kl_times_ratio:
            # kl_coef * kl * ratio: the ratio's slope joins the surrogate's, kl's own slope is scaled.
            dloss_dratio = dloss_dratio + opts.kl_coef * kl
            kl, dkl = kl * ratio, dkl * ratio
    if opts.importance == "sequence":
        # GSPO: every valid token of b carries (s_b / n_b) * sum_u w_bu dloss_bu / ds_b.
        g_seq = (w * dloss_dratio).sum(1) * dratio[:, 0] / counts
        g_logp = torch.where(valid, g_seq[:, None], zero)
    else:
        g_logp = w * dloss_dratio * dratio
    if kl is not None:
        loss = loss + opts.kl_coef * kl
        g_logp = g_logp + w * (opts.kl_coef * dkl)
    if opts.entropy_coef != 0:
        loss = loss - opts.entropy_coef * torch.where(valid, entropy, zero)
        g_entropy = w * -opts.entropy_coef
    else:
        g_entropy = torch.zeros_like(w)
    return torch.where(valid, loss, zero), g_logp, g_entropy, torch.where(valid, ratio, 1.0)


def fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
               logp, entropy, loss, ratio):
    """The fused row pass in PyTorch: log-prob rows, token terms (each row a one-token sequence of
    weight `weight`), then the gradient rows. Same contract as the native kernels: ignored rows get
    zero outputs (ratio 1) and a zero gradient row."""
    lse = torch.empty_like(logp)
    logprobs.rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy)
    old_logp = logp if old_logp is None else old_logp  # None: on-policy
    valid = (targets != ignore_index)[:, None]
    loss_tok, g_logp, g_entropy, ratio_tok = terms(
        logp[:, None], old_logp[:, None], adv, valid, weight, None if ref_logp is None else ref_logp[:, None],
        entropy[:, None], opts)
    loss.copy_(loss_tok[:, 0])
    ratio.copy_(ratio_tok[:, 0])
    entropy.masked_fill_(~valid[:, 0], 0.0)
    logprobs.rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp[:, 0],
                       g_entropy[:, 0] if opts.entropy_coef != 0 else None)

"""The torch backend of the log-prob row pass: vectorised PyTorch over a chunk of logits.

A row pass takes a contiguous chunk of logits z [rows, V] (fp32, or fp64 for float64 inputs):
  rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy)   writes the three [rows] outputs
  rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy)
                                                                             overwrites z with dLoss/dz
g_entropy may be None. A row whose target is ignore_index has logp 0 and no target term in its
gradient, which is -g p - ge p (log p + H): callers pass g = 0 for rows that get no gradient (a
vocabulary shard passes the rows whose targets live on another shard as ignored, with their g). Every backend's module offers these two functions; the maths is in
csrc/include/ia/logprob_row.h, with its guarantees (logp <= 0, entropy >= 0, NaN rows for NaN / +inf
logits or bad targets, -inf logits as probability 0).
"""

from __future__ import annotations

import torch

from ...core.numerics import SHIFTED_LOGIT_FLOOR


def rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
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
    # (x_t - m) - log s, not x_t - lse, whose rounding swamps the log-prob once |m| is large (at
    # |m| = 1e3 in fp32, up to 6e-5); x_t <= m and s >= 1: the clamp makes logp <= 0 exact.
    lp = torch.clamp((x_t - m) - log_s, max=0.0)
    lp = torch.where(in_range, lp, torch.full_like(lp, float("nan")))
    logp.copy_(torch.where(ignored, torch.zeros_like(lp), lp))
    entropy.copy_(torch.clamp(log_s - (e.mul_(d)).sum(-1) / s, min=0.0))
    lse.copy_(lse_)


def rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    ignored = targets == ignore_index
    in_range = (targets >= 0) & (targets < z.shape[1])
    g = g_logp
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

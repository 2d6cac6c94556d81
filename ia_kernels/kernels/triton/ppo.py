"""The triton backend of the PPO loss: per-token terms over [B, T], and the fused linear-PPO row pass.
Interface: see kernels/torch/ppo.py.

The per-token maths mirrors csrc/include/ia/ppo.h function for function (Triton cannot include
C++); the row sweeps are kernels/triton/logprobs.py's. Options that switch terms on or off are
constexpr, so a kernel compiled without a KL penalty or entropy bonus never loads their inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...core.numerics import KL_ESTIMATOR_CODES, MAX_LOG_RATIO
from .logprobs import block_v, finish_row_stats, row_stats, write_row_grad

_MAX_LOG_RATIO = tl.constexpr(MAX_LOG_RATIO)


@triton.jit
def _clamp_keep_nan(x, lo, hi):
    """ia::clamp_keep_nan: tl.minimum / tl.maximum may drop a NaN operand on GPU; NaN must reach the loss."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def _max_keep_nan(a, b):
    """ia::max_keep_nan: NaN if either operand is NaN."""
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def _ratio_from_log(log_ratio):
    """exp(clamp(log_ratio, +-MAX_LOG_RATIO)) and its derivative in log_ratio (0 where clamped)."""
    c = _clamp_keep_nan(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    r = tl.exp(c)
    return r, tl.where((log_ratio > _MAX_LOG_RATIO) | (log_ratio < -_MAX_LOG_RATIO), 0.0, r)


@triton.jit
def _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL: tl.constexpr):
    """(loss, dloss/dratio) of ia::clipped_surrogate."""
    lo = 1.0 - clip_low
    hi = 1.0 + clip_high
    clipped = _clamp_keep_nan(ratio, lo, hi)
    loss = _max_keep_nan(-adv * ratio, -adv * clipped)
    clip_active = ((adv > 0) & (ratio > hi)) | ((adv < 0) & (ratio < lo))
    grad = tl.where(clip_active, 0.0, -adv)
    if HAS_DUAL:
        bound = -adv * dual_clip
        dual = (adv < 0) & (loss > bound)
        loss = tl.where(dual, bound, loss)
        grad = tl.where(dual, 0.0, grad)
    return loss, grad


@triton.jit
def _regularisers(logp, ref, ent, w, ratio, kl_coef, entropy_coef, HAS_KL: tl.constexpr, KL_ESTIMATOR: tl.constexpr,
                  HAS_ENTROPY: tl.constexpr, KL_TIMES_RATIO: tl.constexpr):
    """(loss, w dL/dl, w dL/dh, extra dL/dratio) of the KL penalty and entropy bonus, as
    ia::ppo_regularisers (with KL_TIMES_RATIO the KL term is kl * ratio)."""
    loss = logp * 0.0
    g = logp * 0.0
    ge = logp * 0.0
    kl_slope = logp * 0.0
    if HAS_KL:
        d = ref - logp
        if KL_ESTIMATOR == 1:
            kl = -d
            dkl = d * 0.0 + 1.0
        elif KL_ESTIMATOR == 2:
            kl = 0.5 * d * d
            dkl = -d
        else:
            dc = _clamp_keep_nan(d, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
            e = tl.exp(dc)
            kl = e - dc - 1.0
            dkl = tl.where((d > _MAX_LOG_RATIO) | (d < -_MAX_LOG_RATIO), 0.0, 1.0 - e)
        if KL_TIMES_RATIO:
            kl_slope = kl_coef * kl
            kl = kl * ratio
            dkl = dkl * ratio
        loss += kl_coef * kl
        g += w * kl_coef * dkl
    if HAS_ENTROPY:
        loss -= entropy_coef * ent
        ge = ge - w * entropy_coef
    return loss, g, ge, kl_slope


@triton.jit
def _ppo_terms_kernel(
    logp_ptr,  # [B, T] fp32 policy log-probs
    old_ptr,  # [B, T] fp32 behaviour log-probs
    ref_ptr,  # [B, T] fp32 reference log-probs (read if HAS_KL)
    ent_ptr,  # [B, T] fp32 entropies (read if HAS_ENTROPY)
    adv_ptr,  # advantages, element (b, t) at b * adv_stride_b + t * adv_stride_t
    adv_stride_b,
    adv_stride_t,  # 0 for per-sequence advantages
    mask_ptr,  # [B, T] bool, true on valid tokens
    seq_scale_ptr,  # [B] fp32 aggregation weight of each valid token of a sequence
    loss_ptr,  # [B, T] fp32 out: unweighted token loss L (0 off the mask)
    g_logp_ptr,  # [B, T] fp32 out: w dL/dl
    g_ent_ptr,  # [B, T] fp32 out: w dL/dh
    ratio_ptr,  # [B, T] fp32 out: importance ratio used (1 off the mask)
    T,  # tokens per sequence
    clip_low, clip_high, dual_clip, kl_coef, entropy_coef,  # ia::PpoParams
    HAS_DUAL: tl.constexpr,
    HAS_KL: tl.constexpr,
    KL_ESTIMATOR: tl.constexpr,  # 1, 2, 3 for k1, k2, k3
    HAS_ENTROPY: tl.constexpr,
    KL_TIMES_RATIO: tl.constexpr,  # the KL term multiplied by the importance ratio
    SEQUENCE: tl.constexpr,  # sequence-level importance (GSPO)
    BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    base = b * T
    w = tl.load(seq_scale_ptr + b)
    seq_ratio = 1.0
    seq_dratio = 0.0
    n_valid = 0.0
    if SEQUENCE:
        # First sweep: the sequence's mean log ratio over its valid tokens.
        acc_lr = tl.zeros((BLOCK_T,), tl.float32)
        acc_n = tl.zeros((BLOCK_T,), tl.float32)
        for start in range(0, T, BLOCK_T):
            cols = start + tl.arange(0, BLOCK_T)
            valid = tl.load(mask_ptr + base + cols, mask=cols < T, other=0) != 0
            lp = tl.load(logp_ptr + base + cols, mask=valid, other=0.0)
            old = tl.load(old_ptr + base + cols, mask=valid, other=0.0)
            acc_lr += tl.where(valid, lp - old, 0.0)
            acc_n += tl.where(valid, 1.0, 0.0)
        n_valid = tl.sum(acc_n, 0)
        seq_ratio, seq_dratio = _ratio_from_log(tl.sum(acc_lr, 0) / tl.maximum(n_valid, 1.0))
    acc_g = tl.zeros((BLOCK_T,), tl.float32)
    for start in range(0, T, BLOCK_T):
        cols = start + tl.arange(0, BLOCK_T)
        in_row = cols < T
        valid = tl.load(mask_ptr + base + cols, mask=in_row, other=0) != 0
        lp = tl.load(logp_ptr + base + cols, mask=valid, other=0.0)
        adv = tl.load(adv_ptr + b * adv_stride_b + cols * adv_stride_t, mask=valid, other=0.0)
        ref = lp
        if HAS_KL:
            ref = tl.load(ref_ptr + base + cols, mask=valid, other=0.0)
        ent = lp
        if HAS_ENTROPY:
            ent = tl.load(ent_ptr + base + cols, mask=valid, other=0.0)
        if SEQUENCE:
            ratio = lp * 0.0 + seq_ratio
            loss, g, ge, kl_slope = _regularisers(lp, ref, ent, w, ratio, kl_coef, entropy_coef, HAS_KL, KL_ESTIMATOR,
                                                  HAS_ENTROPY, KL_TIMES_RATIO)
            s_loss, s_grad = _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
            acc_g += tl.where(valid, w * (s_grad + kl_slope), 0.0)
        else:
            old = tl.load(old_ptr + base + cols, mask=valid, other=0.0)
            ratio, dratio = _ratio_from_log(lp - old)
            loss, g, ge, kl_slope = _regularisers(lp, ref, ent, w, ratio, kl_coef, entropy_coef, HAS_KL, KL_ESTIMATOR,
                                                  HAS_ENTROPY, KL_TIMES_RATIO)
            s_loss, s_grad = _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
            g += w * (s_grad + kl_slope) * dratio
        loss += s_loss
        tl.store(loss_ptr + base + cols, tl.where(valid, loss, 0.0), mask=in_row)
        tl.store(g_logp_ptr + base + cols, tl.where(valid, g, 0.0), mask=in_row)
        tl.store(g_ent_ptr + base + cols, tl.where(valid, ge, 0.0), mask=in_row)
        tl.store(ratio_ptr + base + cols, tl.where(valid, ratio, 1.0), mask=in_row)
    if SEQUENCE:
        # Last sweep: every valid token carries (s / n) * sum_u w dsurrogate_u/ds.
        g_shared = tl.sum(acc_g, 0) * seq_dratio / tl.maximum(n_valid, 1.0)
        for start in range(0, T, BLOCK_T):
            cols = start + tl.arange(0, BLOCK_T)
            valid = tl.load(mask_ptr + base + cols, mask=cols < T, other=0) != 0
            g = tl.load(g_logp_ptr + base + cols, mask=valid, other=0.0)
            tl.store(g_logp_ptr + base + cols, g + g_shared, mask=valid)


@triton.jit
def _ppo_rows_fused_kernel(
    z_ptr,  # [rows, V] fp32 logits, overwritten with dLoss/dz
    row_stride,  # elements between rows of z
    V,  # vocabulary size
    targets_ptr,  # [rows] int64 target ids; ignore_index marks a masked token
    inv_temp,  # 1 / temperature
    ignore_index,
    old_ptr,  # [rows] fp32 behaviour log-probs
    adv_ptr,  # [rows] fp32 advantages
    ref_ptr,  # [rows] fp32 reference log-probs (read if HAS_KL)
    weight_ptr,  # [rows] fp32 aggregation weight w of each token
    logp_ptr,  # [rows] fp32 out: log-prob of the target (0 if masked)
    ent_ptr,  # [rows] fp32 out: entropy (0 if masked)
    loss_ptr,  # [rows] fp32 out: unweighted token loss L (0 if masked)
    ratio_ptr,  # [rows] fp32 out: importance ratio (1 if masked)
    clip_low, clip_high, dual_clip, kl_coef, entropy_coef,  # ia::PpoParams
    HAS_DUAL: tl.constexpr,
    HAS_KL: tl.constexpr,
    KL_ESTIMATOR: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    KL_TIMES_RATIO: tl.constexpr,
    HAS_OLD: tl.constexpr,  # False: on-policy, the old log-prob is this pass's own
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * row_stride
    t = tl.load(targets_ptr + row)
    ignored = t == ignore_index
    in_range = (t >= 0) & (t < V)  # a target outside the row is never read: NaN outputs flag it
    m, s, w_sum = row_stats(z_row, V, inv_temp, BLOCK_V)
    logp, lse, ent = finish_row_stats(m, s, w_sum, tl.load(z_row + tl.where(in_range, t, 0)) * inv_temp)
    logp = tl.where(in_range | ignored, logp, float("nan"))
    w = tl.where(ignored, 0.0, tl.load(weight_ptr + row))
    old = logp
    if HAS_OLD:
        old = tl.load(old_ptr + row)
    adv = tl.load(adv_ptr + row)
    ref = logp
    if HAS_KL:
        ref = tl.load(ref_ptr + row)
    ratio, dratio = _ratio_from_log(logp - old)
    loss, g, ge, kl_slope = _regularisers(logp, ref, ent, w, ratio, kl_coef, entropy_coef, HAS_KL, KL_ESTIMATOR,
                                          HAS_ENTROPY, KL_TIMES_RATIO)
    s_loss, s_grad = _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
    loss += s_loss
    g += w * (s_grad + kl_slope) * dratio
    # Masked rows: zero outputs and gradient (w = 0 already zeroes g and ge unless inputs are NaN).
    g = tl.where(ignored, 0.0, g)
    ge = tl.where(ignored, 0.0, ge)
    tl.store(logp_ptr + row, tl.where(ignored, 0.0, logp))
    tl.store(ent_ptr + row, tl.where(ignored, 0.0, ent))
    tl.store(loss_ptr + row, tl.where(ignored, 0.0, loss))
    tl.store(ratio_ptr + row, tl.where(ignored, 1.0, ratio))
    write_row_grad(z_row, V, t, ignored, lse, ent, g, ge, inv_temp, BLOCK_V)


def _flags(opts):
    return dict(HAS_DUAL=opts.dual_clip is not None, HAS_KL=opts.kl_coef != 0,
                KL_ESTIMATOR=KL_ESTIMATOR_CODES[opts.kl_estimator], HAS_ENTROPY=opts.entropy_coef != 0,
                KL_TIMES_RATIO=opts.kl_coef != 0 and opts.kl_times_ratio)


def _params(opts):
    return (opts.clip_low, opts.clip_high, opts.dual_clip or 0.0, opts.kl_coef, opts.entropy_coef)


def terms(logp, old_logp, adv, valid, seq_scale, ref_logp, entropy, opts):
    """Per-token terms over [B, T] (contiguous fp32 inputs): (loss, g_logp, g_entropy, ratio)."""
    B, T = logp.shape
    out = torch.empty((4, B, T), dtype=torch.float32, device=logp.device)
    if B == 0 or T == 0:
        out[3].fill_(1.0)
        out[:3].zero_()
        return out.unbind(0)
    adv_strides = (adv.stride(0), 0) if adv.dim() == 1 else (adv.stride(0), adv.stride(1))
    block_t = min(1024 if logp.is_cuda else 1 << 14, triton.next_power_of_2(T))
    _ppo_terms_kernel[(B,)](
        logp, old_logp, logp if ref_logp is None else ref_logp, logp if entropy is None else entropy, adv,
        *adv_strides, valid, seq_scale, out[0], out[1], out[2], out[3], T, *_params(opts),
        SEQUENCE=opts.importance == "sequence", BLOCK_T=block_t, num_warps=4 if logp.is_cuda else 1, enable_fp_fusion=False,
        **_flags(opts))
    return out.unbind(0)


def fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
               logp, entropy, loss, ratio):
    """Fused row pass of the linear PPO loss (token-level importance) over a chunk of fp32 logits;
    old_logp None: on-policy (the kernel uses its own log-probs)."""
    rows, V = z.shape
    if rows == 0:
        return
    _ppo_rows_fused_kernel[(rows,)](
        z, z.stride(0), V, targets, 1.0 / temperature, ignore_index, adv if old_logp is None else old_logp, adv,
        adv if ref_logp is None else ref_logp, weight, logp, entropy, loss, ratio, *_params(opts),
        BLOCK_V=block_v(V, z.device), num_warps=8 if z.is_cuda else 1, enable_fp_fusion=False, HAS_OLD=old_logp is not None,
        **_flags(opts))

"""The cpu backend of the PPO loss: ia_kernels._C's OpenMP kernels (csrc/cpu/ppo.cpp). Interface:
see kernels/torch/ppo.py. Inputs are contiguous fp32, prepared by the front-ends."""

from __future__ import annotations

import torch

from ... import _native
from ...core.numerics import KL_ESTIMATOR_CODES


def native_params(opts) -> dict:
    """ia::PpoParams's fields, as the keyword arguments of the native kernels (dual_clip 0: off)."""
    return dict(clip_low=opts.clip_low, clip_high=opts.clip_high, dual_clip=opts.dual_clip or 0.0,
                kl_coef=opts.kl_coef, kl_estimator=KL_ESTIMATOR_CODES[opts.kl_estimator],
                entropy_coef=opts.entropy_coef, kl_times_ratio=opts.kl_times_ratio)


def terms(logp, old_logp, adv, valid, seq_scale, ref_logp, entropy, opts):
    B, T = logp.shape
    out = torch.empty((4, B, T), dtype=torch.float32, device=logp.device)
    adv_strides = (adv.stride(0), 0) if adv.dim() == 1 else (adv.stride(0), adv.stride(1))
    _native.cpu_module().ppo_terms(
        B=B, T=T, logp=logp.data_ptr(), old_logp=old_logp.data_ptr(), ref_logp=_native.ptr(ref_logp),
        entropy=_native.ptr(entropy), adv=adv.data_ptr(), adv_stride_b=adv_strides[0], adv_stride_t=adv_strides[1],
        mask=valid.data_ptr(), seq_scale=seq_scale.data_ptr(), **native_params(opts),
        sequence_level=opts.importance == "sequence", loss=out[0].data_ptr(), g_logp=out[1].data_ptr(),
        g_entropy=out[2].data_ptr(), ratio=out[3].data_ptr())
    return out.unbind(0)


def fused_rows(z, targets, temperature, ignore_index, old_logp, adv, ref_logp, weight, opts,
               logp, entropy, loss, ratio):
    _native.cpu_module().ppo_rows_fused(
        logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1], targets=targets.data_ptr(),
        temperature=float(temperature), ignore_index=int(ignore_index), old_logp=_native.ptr(old_logp),
        adv=adv.data_ptr(), ref_logp=_native.ptr(ref_logp), weight=weight.data_ptr(), **native_params(opts),
        logp=logp.data_ptr(), entropy=entropy.data_ptr(), loss=loss.data_ptr(), ratio=ratio.data_ptr())

"""Fused LM-head GEMM + row statistics (Triton): log-prob, log-sum-exp and entropy of each token
straight from hidden [N, H] and weight [V, H], the logits never written to memory.

The unfused path (core/chunks.py) writes each chunk's fp32 logits to HBM with cuBLAS and reads them
back in the row pass: 8 bytes per logit, ~20 GB per forward at N=16384, V=151936. Here each program
owns BLOCK_M rows and sweeps the vocabulary in tiles of BLOCK_N: a tile of logits is formed in
registers by tl.dot (fp32 accumulation; fp32 inputs at full IEEE precision, never TF32) and folded
into the running (max, sum exp, sum exp * (x - max)) of each row, as kernels/triton/logprobs.py's
row_stats does column by column. The forward of linear_logprobs and the no-grad log-probs of RL
(behaviour and reference policies) need nothing more. benchmarks/model.py prices it (design
`fused-fwd`); it is experimental, selected by no front-end, until a GPU run has measured it
against cuBLAS + the row pass (benchmarks/linear_stats.py).

Same conventions as rows_forward: ignored targets give logp 0, a target outside [0, V) gives NaN,
a row whose logits hold NaN or +inf (or only -inf) gives NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.numerics import SHIFTED_LOGIT_FLOOR as _FLOOR

SHIFTED_LOGIT_FLOOR = tl.constexpr(_FLOOR)


@triton.jit
def _linear_stats_kernel(
    h_ptr,  # [N, H] hidden states (bf16, fp16 or fp32)
    stride_hm, stride_hk,
    w_ptr,  # [V, H] LM head, same dtype
    stride_wn, stride_wk,
    targets_ptr,  # [N] int64
    N, V, H,
    inv_temp,  # 1 / temperature
    ignore_index,
    logp_ptr, lse_ptr, ent_ptr,  # [N] fp32 out
    IEEE: tl.constexpr,  # fp32 inputs: full-precision dot (no TF32)
    UPCAST: tl.constexpr,  # the interpreter: dot in fp32 (its bf16 dot is not exact); same products
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    t = tl.load(targets_ptr + rows, mask=rmask, other=0)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_M,), tl.float32)
    w = tl.zeros((BLOCK_M,), tl.float32)
    x_t = tl.zeros((BLOCK_M,), tl.float32)
    n_bad = tl.zeros((BLOCK_M,), tl.int32)
    for n0 in range(0, V, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < V
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < H
            a = tl.load(h_ptr + rows[:, None] * stride_hm + ks[None, :] * stride_hk,
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                        mask=cmask[None, :] & kmask[:, None], other=0.0)
            if UPCAST:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            elif IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        x = tl.where(cmask[None, :], acc * inv_temp, float("-inf"))
        x_t += tl.sum(tl.where(cols[None, :] == t[:, None], x, 0.0), 1)
        n_bad += tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), 1)
        m_new = tl.maximum(m, tl.max(x, 1))
        first = m == float("-inf")
        scale = tl.where(first, 0.0, tl.exp(m - m_new))
        d = tl.where(first, 0.0, m_new - m)
        xm = tl.where(x > float("-inf"), tl.maximum(x - m_new[:, None], SHIFTED_LOGIT_FLOOR), SHIFTED_LOGIT_FLOOR)
        e = tl.exp(xm)
        w = (w - s * d) * scale + tl.sum(e * xm, 1)
        s = s * scale + tl.sum(e, 1)
        m = m_new
    s = tl.where((n_bad > 0) | (m == float("-inf")), float("nan"), s)
    log_s = tl.log(s)
    lse = m + log_s
    logp = x_t - lse
    logp = tl.where(logp > 0.0, 0.0, logp)
    ent = log_s - w / s
    ent = tl.where(ent < 0.0, 0.0, ent)
    ignored = t == ignore_index
    in_range = (t >= 0) & (t < V)
    tl.store(logp_ptr + rows, tl.where(ignored, 0.0, tl.where(in_range, logp, float("nan"))), mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    tl.store(ent_ptr + rows, ent, mask=rmask)


def launch_config(dtype: torch.dtype, device: torch.device) -> dict:
    """Tile sizes, warps and stages for one input dtype on one device (the interpreter: small tiles)."""
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=16, num_warps=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


def linear_stats_forward(hidden, weight, targets, temperature, ignore_index, logp, lse, entropy):
    """logp, lse, entropy [N] (fp32, written) of hidden [N, H] x weight [V, H] (same dtype), targets [N] int64."""
    N, H = hidden.shape
    V = weight.shape[0]
    if N == 0:
        return
    cfg = launch_config(hidden.dtype, hidden.device)
    grid = (triton.cdiv(N, cfg["BLOCK_M"]),)
    _linear_stats_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1), weight, weight.stride(0), weight.stride(1), targets,
        N, V, H, 1.0 / temperature, ignore_index, logp, lse, entropy,
        IEEE=hidden.dtype == torch.float32, UPCAST=not hidden.is_cuda, **cfg)

"""The triton backend of the log-prob row pass: one program per row of fp32 logits. Interface
(rows_forward, rows_backward): see kernels/torch/logprobs.py.

Every launch passes enable_fp_fusion=False: x = z / T must round the same way in every sweep (the
CPU module is built with -ffp-contract=off for the same reason, docs/design.md "Numerics");
Triton would otherwise contract x * (1/T) - m into FMAs on the GPU.

Same maths as csrc/include/ia/logprob_row.h: forward is one online sweep over the row (running
max, sum of exp, sum of exp * (x - max)); backward overwrites the row with its gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


from ...core.numerics import SHIFTED_LOGIT_FLOOR as _FLOOR

SHIFTED_LOGIT_FLOOR = tl.constexpr(_FLOOR)  # see core/numerics.py


@triton.jit
def row_stats(
    z_row,  # pointer to one row of fp32 logits
    V,  # vocabulary size
    inv_temp,  # 1 / temperature
    BLOCK_V: tl.constexpr,  # columns per step of the sweep
):
    """One online sweep over a row of x = z / T: (max m, sum exp(x - m), sum exp(x - m) (x - m)).

    A row holding NaN or +inf, or only -inf, gives s = NaN (hence NaN outputs), as on every backend:
    GPU max reductions drop NaN, so such values are counted explicitly.
    """
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    w = tl.zeros((), tl.float32)
    n_bad = tl.zeros((), tl.int32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(z_row + cols, mask=cols < V, other=float("-inf")) * inv_temp
        n_bad += tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), 0)
        m_new = tl.maximum(m, tl.max(x, 0))
        # Rescale the running sums to the new maximum: w holds sum e (x - m), so shifting m by d
        # turns each term into e' (x - m_new) = e' (x - m) - e' d.
        first = m == float("-inf")
        scale = tl.where(first, 0.0, tl.exp(m - m_new))
        d = tl.where(first, 0.0, m_new - m)
        xm = tl.where(x > float("-inf"), tl.maximum(x - m_new, SHIFTED_LOGIT_FLOOR), SHIFTED_LOGIT_FLOOR)
        e = tl.exp(xm)
        w = (w - s * d) * scale + tl.sum(e * xm, 0)
        s = s * scale + tl.sum(e, 0)
        m = m_new
    s = tl.where((n_bad > 0) | (m == float("-inf")), float("nan"), s)
    return m, s, w


@triton.jit
def finish_row_stats(m, s, w, x_t):
    """(logp, lse, entropy) of ia::finish_row_stats: logp <= 0 and entropy >= 0 exactly, NaN kept."""
    log_s = tl.log(s)
    lse = m + log_s
    logp = (x_t - m) - log_s  # not x_t - lse: lse's rounding would swamp the log-prob at large |m|
    ent = log_s - w / s
    return tl.where(logp > 0.0, 0.0, logp), lse, tl.where(ent < 0.0, 0.0, ent)


@triton.jit
def write_row_grad(
    z_row,  # pointer to one row of fp32 logits, overwritten with dLoss/dz
    V,  # vocabulary size
    t,  # the row's target id
    ignored,  # true: no target term (g still scales -p_j)
    lse,  # log-sum-exp of the row of x = z / T
    ent,  # entropy of softmax(x)
    g,  # upstream gradient of logp
    ge,  # upstream gradient of the entropy
    inv_temp,  # 1 / temperature
    BLOCK_V: tl.constexpr,
):
    """dz_j = (g ([j == t] - p_j) - ge p_j (log p_j + H)) / T, as ia::logit_grad."""
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        log_p = tl.load(z_row + cols, mask=mask, other=0.0) * inv_temp - lse
        log_p = tl.where(log_p < SHIFTED_LOGIT_FLOOR, SHIFTED_LOGIT_FLOOR, log_p)  # NaN kept
        p = tl.exp(log_p)
        onehot = tl.where((cols == t) & (~ignored), 1.0, 0.0)
        dz = (g * (onehot - p) - ge * p * (log_p + ent)) * inv_temp
        tl.store(z_row + cols, dz, mask=mask)


@triton.jit
def _logprob_rows_forward_kernel(
    z_ptr,  # [rows, V] fp32 logits, read
    row_stride,  # elements between rows of z
    V,  # vocabulary size
    targets_ptr,  # [rows] int64 target ids
    inv_temp,  # 1 / temperature
    ignore_index,  # targets equal to this give logp 0
    logp_ptr,  # [rows] fp32 out: (x_t - m) - log s = x_t - lse
    lse_ptr,  # [rows] fp32 out: log-sum-exp of x = z / T
    entropy_ptr,  # [rows] fp32 out: entropy of softmax(x)
    BLOCK_V: tl.constexpr,  # columns per step of the sweep
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * row_stride
    m, s, w = row_stats(z_row, V, inv_temp, BLOCK_V)
    t = tl.load(targets_ptr + row)
    ignored = t == ignore_index
    in_range = (t >= 0) & (t < V)  # a target outside the row is never read: NaN flags it
    x_t = tl.load(z_row + tl.where(in_range, t, 0)) * inv_temp
    logp, lse, ent = finish_row_stats(m, s, w, x_t)
    tl.store(logp_ptr + row, tl.where(ignored, 0.0, tl.where(in_range, logp, float("nan"))))
    tl.store(lse_ptr + row, lse)
    tl.store(entropy_ptr + row, ent)


@triton.jit
def _logprob_rows_backward_kernel(
    z_ptr,  # [rows, V] fp32 logits, overwritten with dLoss/dz
    row_stride,  # elements between rows of z
    V,  # vocabulary size
    targets_ptr,  # [rows] int64 target ids
    inv_temp,  # 1 / temperature
    ignore_index,  # ignored rows: no target term
    lse_ptr,  # [rows] fp32 from forward
    entropy_ptr,  # [rows] fp32 from forward
    g_logp_ptr,  # [rows] fp32 upstream gradient of logp
    g_entropy_ptr,  # [rows] fp32 upstream gradient of entropy (unused unless HAS_G_ENTROPY)
    HAS_G_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * row_stride
    t = tl.load(targets_ptr + row)
    ignored = t == ignore_index
    # A target outside [0, V) that is not ignored: a NaN gradient row (g = NaN), nothing outside it.
    bad = (~ignored) & ((t < 0) | (t >= V))
    # An ignored row keeps -g p_j; only its target term is dropped (see kernels/torch/logprobs.py).
    g = tl.where(bad, float("nan"), tl.load(g_logp_ptr + row))
    if HAS_G_ENTROPY:
        ge = tl.load(g_entropy_ptr + row)
    else:
        ge = 0.0
    lse = tl.load(lse_ptr + row)
    ent = tl.load(entropy_ptr + row)
    write_row_grad(z_row, V, t, ignored, lse, ent, g, ge, inv_temp, BLOCK_V)


def block_v(V: int, device: torch.device) -> int:
    """Columns per step of a row sweep (BLOCK_V), for every Triton row pass (ppo.py's fused rows too)."""
    # The interpreter runs a block as one NumPy op: one big block is fastest there.
    cap = 4096 if device.type == "cuda" else 1 << 16
    return min(cap, triton.next_power_of_2(V))


def rows_forward(z, targets, temperature, ignore_index, logp, lse, entropy):
    rows, V = z.shape
    if rows == 0:
        return
    _logprob_rows_forward_kernel[(rows,)](
        z, z.stride(0), V, targets, 1.0 / temperature, ignore_index, logp, lse, entropy,
        BLOCK_V=block_v(V, z.device), num_warps=8 if z.is_cuda else 1, enable_fp_fusion=False)


def rows_backward(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy):
    rows, V = z.shape
    if rows == 0:
        return
    _logprob_rows_backward_kernel[(rows,)](
        z, z.stride(0), V, targets, 1.0 / temperature, ignore_index, lse, entropy, g_logp,
        g_logp if g_entropy is None else g_entropy, HAS_G_ENTROPY=g_entropy is not None,
        BLOCK_V=block_v(V, z.device), num_warps=8 if z.is_cuda else 1, enable_fp_fusion=False)

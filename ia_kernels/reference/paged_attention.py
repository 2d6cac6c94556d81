"""Float64 reference of paged attention: each query token, one at a time, straight from the
definition (softmax of scaled dot products with the keys at positions 0 .. its own, read through
the block table). Shares nothing with the kernels."""

from __future__ import annotations

import math

import torch


def paged_attention(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q, scale=None) -> torch.Tensor:
    """q [T, H, D]; k_cache / v_cache [num_blocks, block_size, Hk, D]; block_table [B, M]; seqlens [B];
    cu_seqlens_q [B + 1]. Returns [T, H, D] in float64."""
    T, H, D = q.shape
    bs, Hk = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(T, H, D, dtype=torch.float64)
    q64, k64, v64 = q.double().cpu(), k_cache.double().cpu(), v_cache.double().cpu()
    table, lens, cu = block_table.tolist(), seqlens.tolist(), cu_seqlens_q.tolist()
    for b in range(len(lens)):
        q_len = cu[b + 1] - cu[b]
        for i in range(q_len):
            t = cu[b] + i
            position = lens[b] - q_len + i
            keys = [(table[b][p // bs], p % bs) for p in range(position + 1)]
            for h in range(H):
                kvh = h // (H // Hk)
                k = torch.stack([k64[blk, slot, kvh] for blk, slot in keys])
                v = torch.stack([v64[blk, slot, kvh] for blk, slot in keys])
                w = torch.softmax(scale * (k @ q64[t, h]), 0)
                out[t, h] = w @ v
    return out

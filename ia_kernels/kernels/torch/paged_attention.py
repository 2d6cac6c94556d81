"""The torch backend of paged_attention: the keys and values each query may see are gathered from
their blocks, then one masked softmax per row (chunked over rows so that the gathered copy stays
bounded). Runs on any device and dtype; the reference of the fast backends' interface:
    paged_attention(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q, scale) -> out [T, H, D]
with q [T, H, D], k_cache / v_cache [num_blocks, block_size, Hk, D], block_table [B, M] int32,
seqlens [B] int64 (keys per row, its queries' own included), cu_seqlens_q [B + 1] int64 (every
check done by the front-end, ops/paged_attention.py).
"""

from __future__ import annotations

import torch

ROWS_PER_CHUNK = 64


def paged_attention(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q, scale):
    T, H, D = q.shape
    bs, Hk = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    starts, lens = cu_seqlens_q[:-1].tolist(), seqlens.tolist()
    for first in range(0, len(lens), ROWS_PER_CHUNK):
        rows = range(first, min(first + ROWS_PER_CHUNK, len(lens)))
        L = max(lens[b] for b in rows) if rows else 0
        S = max(q_lens[b] for b in rows) if rows else 0
        if L == 0 or S == 0:
            continue
        nb = (L + bs - 1) // bs
        table = block_table[first:first + len(rows), :nb].long()
        # [rows, nb, bs, Hk, D] -> [rows, Hk, nb * bs, D], repeated to the query heads
        k = k_cache[table].flatten(1, 2)[:, :L].permute(0, 2, 1, 3).repeat_interleave(H // Hk, 1)
        v = v_cache[table].flatten(1, 2)[:, :L].permute(0, 2, 1, 3).repeat_interleave(H // Hk, 1)
        qs = q.new_zeros(len(rows), H, S, D)
        for j, b in enumerate(rows):
            qs[j, :, :q_lens[b]] = q[starts[b]:starts[b] + q_lens[b]].transpose(0, 1)
        # query i of row b (of q_len) is at position len - q_len + i and sees keys 0 .. that position
        qpos = torch.tensor([[lens[b] - q_lens[b] + i for i in range(S)] for b in rows], device=q.device)
        visible = torch.arange(L, device=q.device)[None, None, :] <= qpos[:, :, None]
        scores = (qs @ k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        o = torch.softmax(scores, -1) @ v  # a padded query row (i >= q_len) sees key 0 at least: finite
        for j, b in enumerate(rows):
            out[starts[b]:starts[b] + q_lens[b]] = o[j, :, :q_lens[b]].transpose(0, 1)
    return out

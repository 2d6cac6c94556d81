"""The cuda backend of paged_attention: flash-attention's varlen kernel over its paged KV cache
(`flash_attn_varlen_func(..., block_table=...)`, flash-attn >= 2.5, whose cache layout this op's is:
[num_blocks, block_size, kv_heads, head_dim], block_size a multiple of 256). Not run on a GPU yet:
never chosen automatically (backends.VERIFIED), it runs only when asked for (backend="cuda").
Interface: see kernels/torch/paged_attention.py."""

from __future__ import annotations

import torch


def paged_attention(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q, scale):
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as e:
        raise ValueError("paged_attention backend 'cuda' runs flash-attention's paged kernel: pip install "
                         f"flash-attn --no-build-isolation ({e})") from None
    if k_cache.shape[1] % 256:
        raise ValueError(f"paged_attention backend 'cuda': flash-attention's paged cache needs block_size a "
                         f"multiple of 256, got {k_cache.shape[1]}")
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    cu_k = torch.nn.functional.pad(seqlens.cumsum(0), (1, 0)).to(torch.int32)
    return flash_attn_varlen_func(q, k_cache, v_cache, cu_seqlens_q.to(torch.int32), cu_k,
                                  int(q_lens.max()), int(seqlens.max()), softmax_scale=scale, causal=True,
                                  block_table=block_table)

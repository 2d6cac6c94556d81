"""The cpu backend of paged_attention: ia_kernels._C's OpenMP kernel (csrc/cpu/paged_attention.cpp),
fp32. Interface: see kernels/torch/paged_attention.py."""

from __future__ import annotations

import torch

from ... import _native


def paged_attention(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q, scale):
    out = torch.empty_like(q)
    _native.cpu_module().paged_attention(
        q=q.data_ptr(), k_cache=k_cache.data_ptr(), v_cache=v_cache.data_ptr(), block_table=block_table.data_ptr(),
        seqlens=seqlens.data_ptr(), cu_seqlens_q=cu_seqlens_q.data_ptr(), out=out.data_ptr(),
        rows=seqlens.shape[0], tokens=q.shape[0], heads=q.shape[1], kv_heads=k_cache.shape[2], head_dim=q.shape[2],
        block_size=k_cache.shape[1], max_blocks=block_table.shape[1], scale=float(scale))
    return out

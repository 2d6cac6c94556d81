"""paged_attention: attention of new query tokens over a KV cache kept in fixed-size blocks, for the
decode steps and chunked prefills of a continuous-batching rollout engine (ia_train's built-in one).

The cache layout is flash-attention's paged one, so that on a GPU its kernels serve the same cache:
per layer k_cache and v_cache [num_blocks, block_size, kv_heads, head_dim], a block table per row
([rows, max_blocks]: position t of row b lives in block block_table[b, t // block_size], slot
t % block_size). The queries of all rows are packed token-major, q [tokens, heads, head_dim] with
cu_seqlens_q [rows + 1] (row b owns q[cu[b]:cu[b+1]]: 1 for a decode step, a chunk for a prefill);
they are the last tokens of the row's seqlens[b], whose keys and values are already written, and
each attends causally (query i of row b, at position seqlens[b] - q_len + i, sees positions 0 ..
its own). No gradient: sampling only.

Layers: kernel (csrc/cpu/paged_attention.cpp; flash-attention on CUDA) -> launchers
(kernels/<backend>/paged_attention.py) -> this public function (validation, backend selection).
"""

from __future__ import annotations

import math

import torch

from .. import backends
from ..core import checks as _checks
from ..core.numerics import FP32, FP32_FP64

_OP = backends.register("paged_attention", {
    "torch": backends.Impl("ia_kernels.kernels.torch.paged_attention", FP32_FP64),
    "cpu": backends.Impl("ia_kernels.kernels.cpu.paged_attention", FP32),
    "cuda": backends.Impl("ia_kernels.kernels.cuda.paged_attention", (torch.float16, torch.bfloat16)),
})


def _require_index_tensor(name: str, x, dims: int, what: str) -> torch.Tensor:
    _checks.require_int(name, x)
    if x.dim() != dims:
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)}")
    return x


def _validate(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q):
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _checks.require_float(name, x)
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad: paged_attention is for sampling and has no gradient; "
                             "call it under torch.no_grad()")
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, heads, head_dim], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [num_blocks, block_size, kv_heads, head_dim], got shape {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache has shape {tuple(v_cache.shape)} but k_cache {tuple(k_cache.shape)}: they must match")
    if q.dtype != k_cache.dtype or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"q, k_cache and v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    T, H, D = q.shape
    num_blocks, block_size, Hk, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"q's head_dim is {D} but the cache's is {Dk}")
    if Hk < 1 or H % Hk:
        raise ValueError(f"q's {H} heads must be a multiple of the cache's {Hk} kv heads (grouped-query attention)")
    if block_size < 1 or num_blocks < 1:
        raise ValueError(f"k_cache has no room: {num_blocks} blocks of {block_size} positions")
    _require_index_tensor("block_table", block_table, 2, "[rows, max_blocks]")
    _require_index_tensor("seqlens", seqlens, 1, "[rows]")
    B = block_table.shape[0]
    if seqlens.shape[0] != B:
        raise ValueError(f"seqlens has {seqlens.shape[0]} rows but block_table {B}")
    device = _checks.require_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                                         seqlens=seqlens, cu_seqlens_q=cu_seqlens_q)
    if cu_seqlens_q is None:
        if T != B:
            raise ValueError(f"without cu_seqlens_q each row has one query (a decode step): q has {T} tokens for "
                             f"{B} rows")
        cu = torch.arange(B + 1, device=device)
    else:
        cu = _require_index_tensor("cu_seqlens_q", cu_seqlens_q, 1, "[rows + 1]").to(torch.int64)
        if cu.shape[0] != B + 1:
            raise ValueError(f"cu_seqlens_q must have rows + 1 = {B + 1} entries, got {cu.shape[0]}")
    # the kernels index with these: check them once, as the int32 / int64 they read
    lens = seqlens.to(torch.int64)
    q_lens = cu[1:] - cu[:-1]
    limit = block_table.shape[1] * block_size
    bad = (cu[0] != 0) | (cu[-1] != T) | (q_lens < 0).any() | (lens < q_lens).any() | (lens > limit).any()
    if bool(bad):
        if int(cu[0]) != 0 or int(cu[-1]) != T or bool((q_lens < 0).any()):
            raise ValueError(f"cu_seqlens_q must rise from 0 to the {T} query tokens")
        b = int(((lens < q_lens) | (lens > limit)).nonzero()[0, 0])
        raise ValueError(f"seqlens[{b}] = {int(lens[b])} must lie between that row's {int(q_lens[b])} queries and "
                         f"the {limit} positions its block table holds")
    used = torch.arange(block_table.shape[1], device=device)[None] * block_size < lens[:, None]
    ids = block_table.to(torch.int64)[used]
    if ids.numel() and bool(((ids < 0) | (ids >= num_blocks)).any()):
        raise ValueError(f"block_table names a block outside the cache's {num_blocks} blocks (in a position a row uses)")
    table = torch.where(used, block_table, 0).to(torch.int32).contiguous()
    return cu.contiguous(), lens.contiguous(), table


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    seqlens: torch.Tensor, cu_seqlens_q: torch.Tensor | None = None, *, scale: float | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """Causal attention of packed query tokens over a paged KV cache (see the module doc).

    Args:
        q: [tokens, heads, head_dim].
        k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]; heads a multiple of kv_heads.
        block_table: [rows, max_blocks] integer block ids (entries past a row's seqlens are ignored).
        seqlens: [rows] keys of each row, its queries' own included.
        cu_seqlens_q: [rows + 1] offsets of each row's queries in q; None: one query per row.
        scale: the softmax scale (default 1 / sqrt(head_dim)).
    Returns [tokens, heads, head_dim] in q's dtype.
    """
    cu, lens, table = _validate(q, k_cache, v_cache, block_table, seqlens, cu_seqlens_q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _checks.require_positive_finite("scale", scale)
    _, kernels = _OP.select(q.device, q.dtype, backend)
    if q.shape[0] == 0:
        return q.new_empty(q.shape)
    return kernels.paged_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), table, lens, cu, scale)

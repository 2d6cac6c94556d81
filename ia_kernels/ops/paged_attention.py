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


def _check_tensors(q, k_cache, v_cache) -> None:
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
    H, D = q.shape[1:]
    num_blocks, block_size, Hk, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"q's head_dim is {D} but the cache's is {Dk}")
    if Hk < 1 or H % Hk:
        raise ValueError(f"q's {H} heads must be a multiple of the cache's {Hk} kv heads (grouped-query attention)")
    if block_size < 1 or num_blocks < 1:
        raise ValueError(f"k_cache has no room: {num_blocks} blocks of {block_size} positions")


def _require_index_tensor(name: str, x, dims: int, what: str) -> torch.Tensor:
    _checks.require_int(name, x)
    if x.dim() != dims:
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)}")
    return x


class PagedAttentionPlan:
    """The rows of one step's paged attention, checked once and kept in the dtypes the kernels read
    (block table int32, lengths and query offsets int64), for every layer's call: plan() then run()
    per layer, as flashinfer's wrappers split it. The per-layer run() checks only the tensors that
    change between layers (q and the layer's cache), without a host sync."""

    def __init__(self, block_table, seqlens, cu_seqlens_q, *, num_blocks: int, block_size: int,
                 tokens: int | None = None):
        _require_index_tensor("block_table", block_table, 2, "[rows, max_blocks]")
        _require_index_tensor("seqlens", seqlens, 1, "[rows]")
        B = block_table.shape[0]
        if seqlens.shape[0] != B:
            raise ValueError(f"seqlens has {seqlens.shape[0]} rows but block_table {B}")
        device = _checks.require_same_device(block_table=block_table, seqlens=seqlens, cu_seqlens_q=cu_seqlens_q)
        if cu_seqlens_q is None:
            cu = torch.arange(B + 1, device=device)
        else:
            cu = _require_index_tensor("cu_seqlens_q", cu_seqlens_q, 1, "[rows + 1]").to(torch.int64)
            if cu.shape[0] != B + 1:
                raise ValueError(f"cu_seqlens_q must have rows + 1 = {B + 1} entries, got {cu.shape[0]}")
        T = int(cu[-1]) if tokens is None else tokens
        # the kernels index with these: check them once, as the int32 / int64 they read
        lens = seqlens.to(torch.int64)
        q_lens = cu[1:] - cu[:-1]
        limit = block_table.shape[1] * block_size
        if int(cu[0]) != 0 or int(cu[-1]) != T or bool((q_lens < 0).any()):
            raise ValueError(f"cu_seqlens_q must rise from 0 to the {T} query tokens")
        bad = (lens < q_lens) | (lens > limit)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"seqlens[{b}] = {int(lens[b])} must lie between that row's {int(q_lens[b])} queries "
                             f"and the {limit} positions its block table holds")
        used = torch.arange(block_table.shape[1], device=device)[None] * block_size < lens[:, None]
        ids = block_table.to(torch.int64)[used]
        if ids.numel() and bool(((ids < 0) | (ids >= num_blocks)).any()):
            raise ValueError(f"block_table names a block outside the cache's {num_blocks} blocks (in a position a "
                             "row uses)")
        self.table = torch.where(used, block_table, 0).to(torch.int32).contiguous()
        self.seqlens, self.cu_seqlens_q = lens.contiguous(), cu.contiguous()
        self.num_blocks, self.block_size, self.tokens, self.device = num_blocks, block_size, T, device

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, scale: float | None = None,
            backend: str | None = None) -> torch.Tensor:
        """This step's attention for one layer: q [tokens, heads, head_dim] over its cache."""
        _check_tensors(q, k_cache, v_cache)
        if q.shape[0] != self.tokens:
            raise ValueError(f"q has {q.shape[0]} tokens but the plan's rows hold {self.tokens} queries")
        if k_cache.shape[:2] != (self.num_blocks, self.block_size):
            raise ValueError(f"k_cache holds {k_cache.shape[0]} blocks of {k_cache.shape[1]} positions but the plan "
                             f"was made for {self.num_blocks} of {self.block_size}")
        _checks.require_same_device(q=q, k_cache=k_cache, v_cache=v_cache, plan=self.table)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _checks.require_positive_finite("scale", scale)
        _, kernels = _OP.select(q.device, q.dtype, backend)
        if q.shape[0] == 0:
            return q.new_empty(q.shape)
        return kernels.paged_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), self.table,
                                       self.seqlens, self.cu_seqlens_q, scale)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    seqlens: torch.Tensor, cu_seqlens_q: torch.Tensor | None = None, *, scale: float | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """Causal attention of packed query tokens over a paged KV cache (see the module doc); for many
    layers over the same rows, PagedAttentionPlan checks the rows once.

    Args:
        q: [tokens, heads, head_dim].
        k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]; heads a multiple of kv_heads.
        block_table: [rows, max_blocks] integer block ids (entries past a row's seqlens are ignored).
        seqlens: [rows] keys of each row, its queries' own included.
        cu_seqlens_q: [rows + 1] offsets of each row's queries in q; None: one query per row.
        scale: the softmax scale (default 1 / sqrt(head_dim)).
    Returns [tokens, heads, head_dim] in q's dtype.
    """
    _check_tensors(q, k_cache, v_cache)
    _checks.require_tensor("block_table", block_table)
    _checks.require_same_device(q=q, block_table=block_table)
    if cu_seqlens_q is None and block_table.shape[0] != q.shape[0]:
        raise ValueError(f"without cu_seqlens_q each row has one query (a decode step): q has {q.shape[0]} tokens "
                         f"for {block_table.shape[0]} rows")
    plan = PagedAttentionPlan(block_table, seqlens, cu_seqlens_q, num_blocks=k_cache.shape[0],
                              block_size=k_cache.shape[1], tokens=q.shape[0])
    return plan.run(q, k_cache, v_cache, scale=scale, backend=backend)

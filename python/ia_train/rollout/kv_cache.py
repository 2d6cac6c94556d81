"""The built-in engine's KV cache: per layer, keys and values in blocks of `block_size` positions,
laid out as flash-attention's paged cache ([num_blocks, block_size, kv_heads, head_dim]), so that
ia_kernels.paged_attention (and on a GPU flash-attention) reads it through a block table per row.

Blocks are handed out lowest-numbered first and taken back when the sequences that hold them
finish; a block shared by several sequences (a prompt's blocks, shared by its n samples) is counted,
and freed with its last holder. The pool is reserved with torch.empty, and on a CPU the operating
system commits a page when it is first written: the resident memory follows the most tokens held
at once (lowest-first reuse keeps the written blocks few), not rows x the longest response. On a
GPU the reservation itself is the memory.
"""

from __future__ import annotations

import heapq

import torch


class PagedKVCache:
    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.block_size, self.num_blocks, self.dtype = block_size, num_blocks, dtype
        self._free = list(range(num_blocks))  # a heap: the lowest free block first
        self._refs = [0] * num_blocks
        self.in_use = 0
        self.peak = 0  # the most blocks held at once

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"the KV cache's {self.num_blocks} blocks are all in use")
        block = heapq.heappop(self._free)
        self._refs[block] = 1
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        return block

    def share(self, block: int) -> None:
        """One more holder of `block` (a sample sharing its prompt's block)."""
        self._refs[block] += 1

    def release(self, blocks) -> None:
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                heapq.heappush(self._free, block)
                self.in_use -= 1

    def copy_block(self, src: int, dst: int, positions: int) -> None:
        """The first `positions` slots of block `src` into block `dst`, in every layer."""
        for cache in (*self.k, *self.v):
            cache[dst, :positions] = cache[src, :positions]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values [tokens, kv_heads, head_dim] into their slots (block * block_size + offset)."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, slots, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, slots, v)

    def bytes_per_block(self) -> int:
        return 2 * len(self.k) * self.k[0][0].numel() * self.k[0].element_size()

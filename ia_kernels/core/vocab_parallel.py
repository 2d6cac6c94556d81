"""Vocabulary-parallel LM heads: each rank of a process group holds a contiguous block of the
vocabulary's rows (blocks in rank order, sizes may differ), as in Megatron's and torchtitan's
tensor-parallel LM heads.

The fused ops run their usual row passes on this rank's block of logits and combine the per-row
statistics across ranks: a few floats per token, never the [N, V] logits. For a row whose logits are
split into blocks r with local log-sum-exp l_r and local entropy H_r (of the softmax within the
block), with M = max_r l_r and q_r = exp(l_r - M):

    lse = M + log Q,  Q = sum_r q_r
    H   = sum_r (q_r / Q) (H_r - log(q_r / Q)) = (sum_r q_r (H_r - (l_r - M))) / Q + log Q

(the entropy's chain rule; every term is non-negative, so nothing cancels), and the target's logit
comes from the one rank whose block holds it. That is one MAX and one SUM all-reduce of [3, rows].
In backward each rank writes its own block's logits gradient from the global lse and H, which gives
this rank's weight gradient; the hidden gradient is the sum over ranks (one all-reduce of [N, H]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _dist():
    import torch.distributed as dist  # imported on use: single-process users never touch it

    return dist


def resolve_weight(weight, tp_group):
    """(local weight [V_r, H], group or None) from a plain weight and an optional group, or from a
    DTensor sharded on the vocabulary dim (Shard(0)), whose mesh supplies the group."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch without DTensor
        DTensor = None
    if DTensor is not None and isinstance(weight, DTensor):
        if weight.device_mesh.ndim != 1 or len(weight.placements) != 1 or weight.placements[0] != Shard(0):
            raise ValueError(f"weight is a DTensor placed {tuple(weight.placements)} on a {weight.device_mesh.ndim}-D "
                             f"mesh: ia_kernels takes a vocabulary-sharded LM head, placements (Shard(0),) on a 1-D mesh")
        group = weight.device_mesh.get_group()
        if tp_group is not None and tp_group != group:
            raise ValueError("tp_group differs from the process group of the DTensor weight's mesh; pass one of them")
        return weight.to_local(), group
    return weight, tp_group


@dataclass(frozen=True)
class VocabShard:
    """This rank's block of the vocabulary: ids [start, start + size) of `total`."""

    group: object  # torch.distributed ProcessGroup
    start: int
    size: int
    total: int

    @classmethod
    def of(cls, local_rows: int, group, device: torch.device) -> "VocabShard":
        """Gathers every rank's block size (one small all-gather per call)."""
        dist = _dist()
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("tp_group was given but torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group first (e.g. under torchrun)")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        mine = torch.tensor([local_rows], dtype=torch.int64, device=_comm_device(device, group))
        sizes = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(sizes, mine, group=group)
        sizes = [int(s) for s in sizes]
        if min(sizes) < 1:
            raise ValueError(f"every rank needs at least one vocabulary row; block sizes by rank: {sizes}")
        return cls(group, sum(sizes[:rank]), sizes[rank], sum(sizes))

    def localise(self, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """Global ids -> ids within this block; rows whose target is elsewhere (or ignored) get
        ignore_index, which the row passes read as "no target term here"."""
        local = targets - self.start
        owned = (targets != ignore_index) & (local >= 0) & (local < self.size)
        return torch.where(owned, local, ignore_index)

    def combine(self, logp_r, lse_r, entropy_r, local_targets, ignore_index):
        """Global (logp, lse, entropy) [rows] from this block's row-pass outputs (see the module
        docstring). logp is 0 where the global target is ignored (the caller masks those rows)."""
        dist = _dist()
        comm = _comm_device(lse_r.device, self.group)
        m = lse_r.to(comm, copy=True)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
        m = m.to(lse_r.device)
        shift = lse_r - m  # <= 0
        q = torch.exp(shift)
        owned = local_targets != ignore_index
        # x_t - M on the rank that holds the target: logp_r = x_t - lse_r there.
        target_term = torch.where(owned, logp_r + shift, 0.0)
        sums = torch.stack([q, q * (entropy_r - shift), target_term]).to(comm)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.group)
        sums = sums.to(lse_r.device)
        log_q = torch.log(sums[0])
        lse = m + log_q
        entropy = torch.clamp(sums[1] / sums[0] + log_q, min=0.0)
        logp = torch.clamp(sums[2] - log_q, max=0.0)
        return logp, lse, entropy

    def sum_over_ranks(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """In place: the sum of x over the group's ranks (the hidden gradient)."""
        if x is not None:
            dist = _dist()
            comm = _comm_device(x.device, self.group)
            if comm == x.device:
                dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
            else:
                y = x.to(comm)
                dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
                x.copy_(y)
        return x


def _comm_device(device: torch.device, group) -> torch.device:
    """gloo reduces CPU tensors; nccl CUDA tensors."""
    backend = _dist().get_backend(group)
    return torch.device("cpu") if backend == "gloo" else device

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

import struct
from dataclasses import dataclass

import torch


def _dist():
    import torch.distributed as dist  # imported on use: single-process users never touch it

    return dist


def _dtensor_types():
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch without DTensor
        return None, None
    return DTensor, Shard


def resolve_lm_head(weight, bias, tp_group):
    """(local weight [V_r, H], local bias [V_r] or None, group or None) from plain tensors and an
    optional group, or from DTensors sharded on the vocabulary dim (Shard(0)) on a 1-D mesh, whose
    mesh supplies the group. A bias that is a DTensor must be sharded like the weight."""
    DTensor, Shard = _dtensor_types()
    if DTensor is None or not isinstance(weight, DTensor):
        if DTensor is not None and isinstance(bias, DTensor):
            raise ValueError("bias is a DTensor but weight is not: pass both as DTensors placed Shard(0) on one "
                             "mesh, or both as this rank's plain blocks with tp_group")
        return weight, bias, tp_group
    if weight.device_mesh.ndim != 1 or len(weight.placements) != 1 or weight.placements[0] != Shard(0):
        raise ValueError(f"weight is a DTensor placed {tuple(weight.placements)} on a {weight.device_mesh.ndim}-D "
                         f"mesh: ia_kernels takes a vocabulary-sharded LM head, placements (Shard(0),) on a 1-D mesh")
    group = weight.device_mesh.get_group()
    if tp_group is not None and tp_group != group:
        raise ValueError("tp_group differs from the process group of the DTensor weight's mesh; pass one of them")
    if isinstance(bias, DTensor):
        if bias.device_mesh != weight.device_mesh or tuple(bias.placements) != (Shard(0),):
            raise ValueError(f"bias is a DTensor placed {tuple(bias.placements)}: it must be placed (Shard(0),) on "
                             f"the weight's mesh, like the weight")
        bias = bias.to_local()
    elif bias is not None:
        raise ValueError("weight is a DTensor but bias is a plain tensor: pass the bias as a DTensor placed "
                         "Shard(0) on the weight's mesh")
    return weight.to_local(), bias, group


def resolve_weight(weight, tp_group):
    """(local weight, group or None): resolve_lm_head without a bias."""
    weight, _, group = resolve_lm_head(weight, None, tp_group)
    return weight, group


def _require_group(tp_group) -> None:
    """tp_group must be a ProcessGroup this process belongs to, with torch.distributed initialised."""
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("tp_group was given but torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group first (e.g. under torchrun)")
    if not isinstance(tp_group, dist.ProcessGroup):
        hint = (": for a DeviceMesh pass mesh.get_group()" if type(tp_group).__name__ == "DeviceMesh"
                else ", e.g. torch.distributed.group.WORLD or torch.distributed.new_group(...)")
        raise ValueError(f"tp_group must be a torch.distributed ProcessGroup or None, got "
                         f"{type(tp_group).__name__} {tp_group!r}{hint}")
    if dist.get_rank(tp_group) < 0:
        raise ValueError("this process is not a member of tp_group: call the op only on the group's ranks")


# What the ranks of a vocabulary-parallel call must agree on, besides their block sizes: each key is
# one entry of the agreement all-gather, with what to call it in the error. Most decide the number
# and sizes of the collectives that follow (a mismatch hangs, or aborts inside the backend); the
# rest must match for the combined statistics to mean anything.
AGREEMENT = {
    "op": "the op",
    "H": "H, hidden's last dimension",
    "B": "B, hidden.shape[0]",
    "T": "T, hidden.shape[1]",
    "tokens": "the number of tokens (the elements of targets)",
    "valid_tokens": "the number of valid tokens (targets != ignore_index where mask is nonzero)",
    "targets": "the targets (a checksum of the ids the kernels read and their positions: each rank must "
               "pass the same batch)",
    "chunk_size": "chunk_size",
    "chunk_bytes": "IA_KERNELS_CHUNK_BYTES (or the device's default), which sizes the chunks when chunk_size is None",
    "float64": "whether the call computes in float64 (weight.dtype)",
    "hidden_grad": "whether hidden's gradient is wanted (hidden.requires_grad under grad mode)",
    "sequence_level": "importance",
    "temperature": "temperature",
    "ignore_index": "ignore_index",
    "logit_scale": "logit_scale",
    "softcap": "softcap",
}
_FLOAT_KEYS = ("temperature", "logit_scale", "softcap")
_OPS = {1: "linear_logprobs", 2: "linear_ppo_loss"}
# Besides AGREEMENT's entries, each rank sends: whether its own validation refused the call, the
# smallest and largest target it reads (checked against the global vocabulary, which no rank knows
# before the gather) and FLAGS, bits of checks made on the device.
_REFUSED, _TARGET_MIN, _TARGET_MAX, _FLAGS = "refused", "target_min", "target_max", "flags"
_LAYOUT = ["rows", _REFUSED, _TARGET_MIN, _TARGET_MAX, _FLAGS] + list(AGREEMENT)
FLAG_NORMALISER, FLAG_ADVANTAGES, FLAG_IMPORTANCE_WEIGHTS = 1, 2, 4
_FLAG_TEXT = {FLAG_NORMALISER: "a tensor num_tokens / num_sequences that is not finite and > 0",
              FLAG_ADVANTAGES: "NaN or inf advantages on valid tokens",
              FLAG_IMPORTANCE_WEIGHTS: "importance_weights negative or not finite on valid tokens"}
_ABSENT = -(1 << 63)  # an entry the op does not use
_NONE = _ABSENT + 1  # an int setting left as None
_INT64_MAX = (1 << 63) - 1


def targets_checksum(targets: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """0-d int64 on the targets' device (no sync): a checksum of the ids the kernels read and of
    where they are, exact in int64 (each term below 2^31, for up to 2^32 tokens). Ranks that were
    handed different batches of the same shape agree on every size but not on this."""
    flat, keep = targets.reshape(-1), read.reshape(-1)
    pos = torch.arange(flat.numel(), device=flat.device) % 32749 + 1
    return torch.where(keep, (flat % 65521 + 1) * pos, 0).sum()


def _entry(key: str, value) -> int:
    """A host value as one int64 entry: ints as they are, floats by their bits (None: NaN's bits
    for a float key, _NONE for an int one)."""
    if key in _FLOAT_KEYS:
        return struct.unpack("<q", struct.pack("<d", float("nan") if value is None else float(value)))[0]
    return _NONE if value is None else int(value)


def _shown(key: str, entry: int):
    if entry == _ABSENT:
        return "(not used by this op)"
    if key in _FLOAT_KEYS:
        value = struct.unpack("<d", struct.pack("<q", entry))[0]
        return None if value != value else value
    if entry == _NONE:
        return None
    if key in ("float64", "hidden_grad"):
        return bool(entry)
    if key == "sequence_level":
        return repr("sequence" if entry else "token")
    if key == "op":
        return _OPS.get(entry, entry)
    return entry


@dataclass
class LocalCall:
    """One rank's part of a vocabulary-parallel call, from its own validation (`prepare` of
    VocabShard.agree): its block's rows, its AGREEMENT entries (host values, or 0-d integer
    tensors on the device: copied into the gather, never read on the host), the targets it reads
    and its device-side check flags (0-d tensors, or None), the op's prepared arguments, and a
    function that raises this rank's precise error for a flag."""

    rows: int
    entries: dict
    result: object
    targets: torch.Tensor | None = None  # int64 targets, ignore_index (or masked) entries excluded by `read`
    read: torch.Tensor | None = None  # bool: which targets the kernels read
    flags: torch.Tensor | None = None  # 0-d int64: FLAG_* bits
    explain: object = None  # callable(flags: int) raising this rank's ValueError


def _comm_device(device: torch.device | None, group) -> torch.device:
    """gloo reduces CPU tensors; nccl CUDA tensors."""
    backend = _dist().get_backend(group)
    if backend == "gloo":
        return torch.device("cpu")
    if device is not None:
        return device
    # The call's arguments were refused before a device was known: nccl still needs a CUDA tensor.
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


@dataclass(frozen=True)
class VocabShard:
    """This rank's block of the vocabulary: ids [start, start + size) of `total`."""

    group: object  # torch.distributed ProcessGroup
    start: int
    size: int
    total: int

    @classmethod
    def agree(cls, group, device: torch.device | None, prepare) -> tuple["VocabShard", object]:
        """(this rank's shard, prepare()'s result) after one small all-gather that every rank makes
        whatever its arguments, so that no rank is left waiting in a collective that another skips.

        prepare() validates this rank's arguments and returns a LocalCall; a ValueError from it is
        carried by the gather. Then every rank raises the same ValueError when, in this order: a
        rank's validation failed (the messages are exchanged: the error path's only other
        collective); a target lies outside the global vocabulary; the ranks disagree on an
        AGREEMENT entry (naming the argument and two ranks' values); a rank's device-side checks
        failed. One host sync (reading the gathered table), none more on success.
        """
        _require_group(group)
        dist = _dist()
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        try:
            local, error = prepare(), None
        except Exception as exc:  # noqa: BLE001 - raised again below, once every rank knows
            local, error = None, exc
        comm = _comm_device(device, group)
        host = {"rows": 0, _REFUSED: 1} if local is None else {"rows": local.rows, _REFUSED: 0}
        if local is not None:
            for key, value in local.entries.items():
                if key not in AGREEMENT:
                    raise KeyError(key)
                if not isinstance(value, torch.Tensor):
                    host[key] = _entry(key, value)
        mine = torch.tensor([host.get(key, _ABSENT) for key in _LAYOUT], dtype=torch.int64).to(comm)
        if local is not None:
            on_device = {k: v for k, v in local.entries.items() if isinstance(v, torch.Tensor)}
            if local.targets is not None:
                t, read = local.targets, local.read
                on_device[_TARGET_MIN] = torch.where(read, t, _INT64_MAX).amin() if t.numel() else None
                on_device[_TARGET_MAX] = torch.where(read, t, _ABSENT).amax() if t.numel() else None
            if local.flags is not None:
                on_device[_FLAGS] = local.flags
            for key, value in on_device.items():  # copied on the device, not read on the host
                if value is not None:
                    mine[_LAYOUT.index(key)] = value.reshape(()).to(device=comm, dtype=torch.int64)
        everyone = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine, group=group)
        table = [dict(zip(_LAYOUT, t.tolist())) for t in everyone]  # the one host sync
        refused = [r for r in range(world) if table[r][_REFUSED]]
        if refused:
            messages = [None] * world
            dist.all_gather_object(messages, None if error is None else str(error), group=group)
            if error is not None:
                raise error
            r = refused[0]
            raise ValueError(f"rank {r} of tp_group refused the call: {messages[r]}")
        sizes = [row["rows"] for row in table]
        if min(sizes) < 1:
            raise ValueError(f"every rank needs at least one vocabulary row; block sizes by rank: {sizes}")
        total = sum(sizes)
        for r, row in enumerate(table):
            lo, hi = row[_TARGET_MIN], row[_TARGET_MAX]
            if lo != _ABSENT and lo <= hi and (lo < 0 or hi >= total):
                where = "" if r == rank else f" (on rank {r} of tp_group)"
                raise ValueError(f"targets must lie in [0, {total}) or equal ignore_index; found "
                                 f"{lo if lo < 0 else hi}{where}")
        for key in AGREEMENT:
            column = [row[key] for row in table]
            other = next((r for r in range(world) if column[r] != column[0]), None)
            if other is not None:
                raise ValueError(f"the ranks of tp_group disagree on {AGREEMENT[key]}: rank 0 has "
                                 f"{_shown(key, column[0])}, rank {other} has {_shown(key, column[other])}; every "
                                 f"rank of a vocabulary-parallel call passes the same hidden states, targets, "
                                 f"per-token inputs and settings (only weight and bias are per rank)")
        for r, row in enumerate(table):
            flags = row[_FLAGS]
            if flags != _ABSENT and flags:
                if r == rank and local.explain is not None:
                    local.explain(flags)
                what = " and ".join(text for bit, text in _FLAG_TEXT.items() if flags & bit)
                raise ValueError(f"rank {r} of tp_group refused the call: {what}")
        return cls(group, sum(sizes[:rank]), sizes[rank], total), local.result

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

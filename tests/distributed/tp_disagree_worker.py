"""One rank of the vocabulary-parallel refusal checks (tests/test_vocab_parallel_agreement.py launches
it with torchrun, 2 ranks on gloo).

Each case makes the two ranks call a vocabulary-parallel op with arguments they disagree on (or with
one rank's arguments refused): every rank must raise a ValueError, promptly, instead of aborting
inside gloo or waiting in a collective the other rank skipped. The process group is created with a
short timeout so that a hang shows up as a failed case, not a stalled test. The last case checks that
the group still works after all the refusals. Results go to OUT/rank<r>.json as
{case: {"type": exception type or None, "message": ...}}.
"""

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import ia_kernels as ik

OUT = sys.argv[1]
dist.init_process_group("gloo", timeout=timedelta(seconds=45))
RANK, WORLD = dist.get_rank(), dist.get_world_size()
GROUP = dist.group.WORLD
V, H = 37, 16
SPLIT = [25, 12]
BLOCK = slice(sum(SPLIT[:RANK]), sum(SPLIT[:RANK + 1]))


def inputs(lead=(4, 9), h=H, seed=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, h, generator=g)
    weight = torch.randn(V, h, generator=g) * 0.3
    targets = torch.randint(0, V, lead, generator=g)
    return hidden, weight[BLOCK].contiguous(), targets


def mine(rank0, rank1):
    """This rank's value of an argument the ranks disagree on."""
    return rank0 if RANK == 0 else rank1


def logprobs(lead=(4, 9), h=H, **kw):
    hidden, weight, targets = inputs(lead, h)
    hidden.requires_grad_(kw.pop("requires_grad", False))
    return ik.linear_logprobs(hidden, weight, kw.pop("targets", targets), tp_group=kw.pop("tp_group", GROUP), **kw)


def ppo(mask=None, advantages=None, **kw):
    hidden, weight, targets = inputs((4, 9))
    old = torch.full((4, 9), -3.0)
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0]) if advantages is None else advantages
    return ik.linear_ppo_loss(hidden, weight, targets, old, adv, mask, tp_group=GROUP, **kw)


CASES = {
    "unequal-H": lambda: logprobs(h=mine(16, 8)),
    "unequal-chunk_size": lambda: logprobs(chunk_size=mine(7, 5)),
    "unequal-tokens": lambda: logprobs(lead=mine((4, 9), (4, 8))),
    "unequal-temperature": lambda: logprobs(temperature=mine(1.0, 0.7)),
    "unequal-requires_grad": lambda: logprobs(requires_grad=mine(True, False)),
    "unequal-chunk-bytes": None,  # set below: needs the environment variable per rank
    "one-rank-refused": lambda: logprobs(temperature=mine(1.0, -1.0)),
    "one-rank-bad-target": lambda: logprobs(targets=mine(torch.zeros(4, 9, dtype=torch.int64),
                                                          torch.full((4, 9), V, dtype=torch.int64))),
    "different-ops": lambda: logprobs() if RANK == 0 else ppo(),
    "ppo-unequal-valid-tokens": lambda: ppo(mask=mine(torch.ones(4, 9), torch.ones(4, 9).tril())),
    "ppo-unequal-importance": lambda: ppo(importance=mine("token", "sequence")),
    "ppo-one-rank-nan-advantages": lambda: ppo(advantages=mine(torch.ones(4), torch.tensor([1.0, float("nan"), 0, 0]))),
    "ppo-one-rank-bad-num_tokens": lambda: ppo(num_tokens=mine(torch.tensor(36.0), torch.tensor(-36.0))),
    "ppo-one-rank-negative-importance-weights": lambda: ppo(importance_weights=mine(torch.ones(4, 9),
                                                                                  -torch.ones(4, 9))),
    "tp_group-string": lambda: logprobs(tp_group="world"),
    # Same shapes, different batches (a data-loader that shards by the wrong rank): caught by the
    # targets' checksum.
    "unequal-targets": lambda: logprobs(targets=(inputs()[2] + RANK) % V),
    "ppo-unequal-mask-same-count": lambda: ppo(mask=torch.ones(4, 9).tril().roll(RANK, dims=1)),
}


def unequal_chunk_bytes():
    os.environ["IA_KERNELS_CHUNK_BYTES"] = mine("4096", "8192")
    try:
        return logprobs()
    finally:
        del os.environ["IA_KERNELS_CHUNK_BYTES"]


CASES["unequal-chunk-bytes"] = unequal_chunk_bytes


def dtensor_hidden():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    hidden, weight, targets = inputs()
    return ik.linear_logprobs(distribute_tensor(hidden, mesh, [Replicate()]), weight, targets, tp_group=GROUP)


CASES["dtensor-hidden"] = dtensor_hidden

results = {}
for name, case in CASES.items():
    try:
        case()
        results[name] = {"type": None, "message": None}
    except Exception as e:  # noqa: BLE001 - recorded for the test to judge
        results[name] = {"type": type(e).__name__, "message": str(e)}

# After every refusal the group still runs a call, and it equals the single-process op.
g = torch.Generator().manual_seed(11)
hidden, weight, targets = torch.randn(4, 9, H, generator=g), torch.randn(V, H, generator=g) * 0.3, None
targets = torch.randint(0, V, (4, 9), generator=g)
sharded = ik.linear_logprobs(hidden, weight[BLOCK].contiguous(), targets, tp_group=GROUP, chunk_size=7)
single = ik.linear_logprobs(hidden, weight, targets)
results["still-works"] = {"type": None, "message": float((sharded - single).abs().max())}

with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
    json.dump(results, f)
dist.destroy_process_group()

"""One rank of the vocabulary-parallel checks (tests/test_vocab_parallel.py launches it with torchrun).

Every rank builds the same inputs from one seed, runs each op twice — single-process with the whole
LM head, and vocabulary-parallel with this rank's block — and writes the largest differences of
values and gradients (hidden: full; weight/bias: this rank's block), relative to the values' scale,
to OUT/rank<r>.json.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

import ia_kernels as ik

OUT = sys.argv[1]
dist.init_process_group("gloo")
RANK, WORLD = dist.get_rank(), dist.get_world_size()
V, H = 37, 16
SPLIT = [25, 12] if WORLD == 2 else [V // WORLD + (r < V % WORLD) for r in range(WORLD)]
START = sum(SPLIT[:RANK])
BLOCK = slice(START, START + SPLIT[RANK])


def inputs(dtype, lead):
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(*lead, H, generator=g, dtype=torch.float64).to(dtype)
    # Logits of scale ~2: log-probs stay well inside the k3 clamp (|l_ref - l| < 20), where a last-bit
    # difference would flip a gradient between 0 and -e^20.
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.randint(0, V, lead, generator=g)
    targets.view(-1)[::4] = -100
    return hidden, weight, bias, targets


def err(a, b):
    """Largest difference, relative to the largest magnitude of the single-process values (the
    k3 KL term reaches e^20 where the policy is far from the reference)."""
    if a is None and b is None:
        return 0.0
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1.0))


def run(fn, hidden, weight, bias):
    """(outputs, grads of hidden, weight, bias) of sum(outputs * fixed random weights)."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(5)
    total = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    total.backward()
    return [o.detach() for o in outs], [t.grad for t in leaves]


def compare(name, single, sharded):
    (o1, (gh1, gw1, gb1)), (o2, (gh2, gw2, gb2)) = single, sharded
    return {"case": name, "outputs": max(err(a, b) for a, b in zip(o1, o2)), "grad_hidden": err(gh1, gh2),
            "grad_weight": err(gw1[BLOCK], gw2), "grad_bias": err(gb1[BLOCK], gb2),
            "values": [float(o.double().sum()) for o in o2]}


results = []
backends = ["torch", "cpu", "triton"]
for backend in backends:
    lead = (3, 5) if backend == "triton" else (4, 9)
    hidden, weight, bias, targets = inputs(torch.float32, lead)

    def logprobs(h, w, b, tp=None, backend=backend):
        return ik.linear_logprobs(h, w, targets, bias=b, temperature=0.7, return_entropy=True, backend=backend,
                                  chunk_size=7, tp_group=tp)

    results.append(compare(f"linear_logprobs/{backend}", run(logprobs, hidden, weight, bias),
                           run(lambda h, w, b: logprobs(h, w, b, dist.group.WORLD), hidden, weight[BLOCK], bias[BLOCK])))
    B, T = lead
    g = torch.Generator().manual_seed(7)
    old = -torch.rand(B, T, generator=g) * 3 - 0.5
    ref = old + 0.1 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    option_sets = {
        "grpo": {},
        "dapo-kl-entropy": dict(clip_high=0.28, dual_clip=3.0, kl_coef=0.05, ref_logp=ref, entropy_coef=0.01,
                                aggregation="seq-mean-token-sum"),
        "gspo": dict(importance="sequence", aggregation="seq-mean-token-mean"),
    }
    for opt_name, opts in option_sets.items():
        def loss(h, w, b, tp=None, opts=opts, backend=backend):
            value, metrics = ik.linear_ppo_loss(h, w, targets, old, adv, mask, bias=b, temperature=0.7,
                                                backend=backend, chunk_size=7, tp_group=tp, **opts)
            return [value, metrics["entropy_mean"], metrics["ratio_mean"]]

        results.append(compare(f"linear_ppo_loss/{opt_name}/{backend}", run(loss, hidden, weight, bias),
                               run(lambda h, w, b: loss(h, w, b, dist.group.WORLD), hidden, weight[BLOCK],
                                   bias[BLOCK])))

# float64 on the torch backend: the combination itself is exact to float64 rounding.
hidden, weight, bias, targets = inputs(torch.float64, (4, 9))


def logprobs64(h, w, b, tp=None):
    return ik.linear_logprobs(h, w, targets, bias=b, return_entropy=True, chunk_size=5, tp_group=tp)


results.append(compare("linear_logprobs/float64", run(logprobs64, hidden, weight, bias),
                       run(lambda h, w, b: logprobs64(h, w, b, dist.group.WORLD), hidden, weight[BLOCK], bias[BLOCK])))

# A DTensor LM head placed Shard(0): the group comes from its mesh (torch's even split).
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import Shard, distribute_tensor  # noqa: E402

mesh = init_device_mesh("cpu", (WORLD,))
hidden, weight, _, targets = inputs(torch.float32, (4, 9))
full = run(lambda h, w, b: ik.linear_logprobs(h, w, targets, return_entropy=True, backend="cpu"), hidden, weight,
           torch.zeros(V))
w_dt = distribute_tensor(weight.clone(), mesh, [Shard(0)]).requires_grad_()
h = hidden.clone().requires_grad_()
outs = ik.linear_logprobs(h, w_dt, targets, return_entropy=True, backend="cpu")
gen = torch.Generator().manual_seed(5)
sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs).backward()
local = w_dt.grad.to_local()
lo = sum(t.shape[0] for t in torch.chunk(torch.empty(V), WORLD)[:RANK])
results.append({"case": "linear_logprobs/dtensor", "outputs": max(err(a, b) for a, b in zip(full[0], outs)),
                "grad_hidden": err(full[1][0], h.grad), "grad_weight": err(full[1][1][lo:lo + local.shape[0]], local),
                "grad_bias": 0.0, "values": [float(o.double().sum()) for o in outs]})

# A DTensor bias placed like the weight: its local block is the rank's bias block.
bias = torch.randn(V, generator=torch.Generator().manual_seed(3))
full = run(lambda h, w, b: ik.linear_logprobs(h, w, targets, bias=b, return_entropy=True, backend="cpu"), hidden,
           weight, bias)
w_dt = distribute_tensor(weight.clone(), mesh, [Shard(0)]).requires_grad_()
b_dt = distribute_tensor(bias.clone(), mesh, [Shard(0)]).requires_grad_()
h = hidden.clone().requires_grad_()
outs = ik.linear_logprobs(h, w_dt, targets, bias=b_dt, return_entropy=True, backend="cpu")
gen = torch.Generator().manual_seed(5)
sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs).backward()
n_local = w_dt.grad.to_local().shape[0]
results.append({"case": "linear_logprobs/dtensor-bias", "outputs": max(err(a, b) for a, b in zip(full[0], outs)),
                "grad_hidden": err(full[1][0], h.grad),
                "grad_weight": err(full[1][1][lo:lo + n_local], w_dt.grad.to_local()),
                "grad_bias": err(full[1][2][lo:lo + n_local], b_dt.grad.to_local()),
                "values": [float(o.double().sum()) for o in outs]})

# A bad target is refused on every rank with the global vocabulary in the message.
try:
    ik.linear_logprobs(hidden, weight[BLOCK], torch.full((4, 9), V), tp_group=dist.group.WORLD)
    results.append({"case": "bad-target", "message": None})
except ValueError as e:
    results.append({"case": "bad-target", "message": str(e)})

with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
    json.dump(results, f)
dist.destroy_process_group()

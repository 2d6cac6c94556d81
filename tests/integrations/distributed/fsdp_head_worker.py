"""One rank of the sharded-LM-head checks (tests/integrations/test_sharded_head.py runs it with torchrun).

The bundled tiny model under FSDP2 (fully_shard, gloo, CPU), its LM head either in the root unit or
wrapped as its own unit (what size-based wrapping does with a large vocabulary). Each rank computes a
loss on its own sequences, backward, and FSDP2 averages the gradients over ranks. Every rank also
computes the reference: the unsharded model's gradients on each rank's sequences, averaged. Written to
OUT/rank<r>.json: for each wrapping and each path, the largest gradient difference to the reference
(LM head and all parameters) and the largest reference gradient.

Paths: "ia_kernels" is IAGRPOTrainer's fused loss (fused_head_loss: the loss runs as the head module's
forward, inside the model's forward); "trl" is TRL 1.16's own fused LM head (add_fused_lm_head), which
reads lm_head.weight outside the head's forward.
"""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

OUT = sys.argv[1]
dist.init_process_group("gloo")
RANK, WORLD = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)

from transformers import AutoModelForCausalLM  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

import ia_kernels as ik  # noqa: E402
from ia_kernels.integrations.trl import _install_loss_forward, fused_head_loss  # noqa: E402
from ia_train.models import TINY_DIR  # noqa: E402

B, P, T = 3, 5, 7


def batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(3, 99, (B, P + T), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # left padding
    mask = torch.ones(B, T)
    mask[1, 5:] = 0  # a shorter completion
    adv = torch.randn(B, generator=g)
    coef = torch.randn(B, T, generator=g)
    return ids, attn, mask, adv, coef


def ia_loss(model, base, rank):
    ids, attn, mask, adv, _ = batch(rank)
    targets = ids[:, -T:]

    def fn(hidden, weight, bias):
        loss, _ = ik.linear_ppo_loss(hidden, weight, targets, None, adv, mask, bias=bias, temperature=0.9,
                                     aggregation="grpo", check_finite=False)
        return loss

    return fused_head_loss(model, base, ids, attn, T, fn)


def trl_loss(model, rank):
    ids, attn, mask, _, coef = batch(rank)
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :-T] = -100
    out = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    return (out.log_probs[:, -T:] * coef * mask).sum() / mask.sum()


def reference_trl_loss(model, rank):
    ids, attn, mask, _, coef = batch(rank)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -T:, None])[..., 0]
    return (logp * coef * mask).sum() / mask.sum()


def grads(model):
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):
            g = g.full_tensor()
        out[name] = torch.zeros_like(p if not hasattr(p, "full_tensor") else p.full_tensor()) if g is None else g
    return out


def reference(make_model, loss_of):
    """Unsharded: the mean over ranks of each rank's gradient (FSDP2 averages)."""
    total = None
    for rank in range(WORLD):
        model = make_model()
        loss_of(model, rank).backward()
        g = grads(model)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return {k: v / WORLD for k, v in total.items()}


def shard(model, head_unit: bool):
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    if head_unit:
        fully_shard(model.lm_head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def compare(want, have):
    head = [k for k in want if k.startswith("lm_head")]
    return {"head_error": max((want[k] - have[k]).abs().max().item() for k in head),
            "head_scale": max(want[k].abs().max().item() for k in head),
            "all_error": max((want[k] - have[k]).abs().max().item() for k in want),
            "all_scale": max(want[k].abs().max().item() for k in want)}


def main():
    base = AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, dtype=torch.float32)
    results = {}

    def ia_model():
        model = copy.deepcopy(base)
        _install_loss_forward(model)
        return model

    def trl_model():
        model = copy.deepcopy(base)
        add_fused_lm_head(model, temperature=1.0)
        return model

    want_ia = reference(ia_model, lambda m, r: ia_loss(m, m, r))
    want_trl = reference(lambda: copy.deepcopy(base), reference_trl_loss)
    for head_unit in (False, True):
        wrapping = "lm_head own unit" if head_unit else "lm_head in root unit"
        model = shard(ia_model(), head_unit)
        ia_loss(model, model, RANK).backward()
        results[f"ia_kernels, {wrapping}"] = compare(want_ia, grads(model))
        model = shard(trl_model(), head_unit)
        trl_loss(model, RANK).backward()
        results[f"trl, {wrapping}"] = compare(want_trl, grads(model))
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


main()

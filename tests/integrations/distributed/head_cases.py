"""What the sharded-LM-head workers (fsdp_head_worker.py, zero3_head_worker.py) compute: each rank's
sequences, the two fused paths' losses (IAGRPOTrainer's fused_head_loss, TRL 1.16's fused LM head) and
the unsharded reference: the mean over ranks of each rank's gradients (FSDP2 and ZeRO-3 average)."""

import torch

import ia_kernels as ik
from ia_kernels.integrations.trl import fused_head_loss

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
    """IAGRPOTrainer's path: linear_ppo_loss run as the LM head's forward inside model's forward."""
    ids, attn, mask, adv, _ = batch(rank)
    targets = ids[:, -T:]

    def fn(hidden, weight, bias):
        loss, _ = ik.linear_ppo_loss(hidden, weight, targets, None, adv, mask, bias=bias, temperature=0.9,
                                     aggregation="grpo", check_finite=False)
        return loss

    return fused_head_loss(model, base, ids, attn, T, fn)


def trl_loss(model, rank):
    """TRL 1.16's fused LM head (add_fused_lm_head): log-probs from lm_head.weight read directly."""
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


def reference(make_model, loss_of, world):
    """Unsharded: the mean over ranks of each rank's gradient."""
    total = None
    for rank in range(world):
        model = make_model()
        loss_of(model, rank).backward()
        g = grads(model)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return {k: v / world for k, v in total.items()}


def compare(want, have):
    head = [k for k in want if k.startswith("lm_head")]
    return {"head_error": max((want[k] - have[k]).abs().max().item() for k in head),
            "head_scale": max(want[k].abs().max().item() for k in head),
            "all_error": max((want[k] - have[k]).abs().max().item() for k in want),
            "all_scale": max(want[k].abs().max().item() for k in want)}

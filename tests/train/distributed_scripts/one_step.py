"""One PPO update of the tiny model on a fixed, synthetic rollout batch, then the full parameters
to a file. Run plainly (one process, the whole batch) or under torchrun (each rank its block of
the batch, FSDP2): the test compares the two.

    python one_step.py OUT.pt [dr_grpo]
"""

import sys

import torch

from ia_train.config import Config
from ia_train.loop.update import ppo_update
from ia_train.models import Policy, load_model
from ia_train.rollout import Rollout
from ia_train.runtime import distributed


def batch(B: int, P: int, T: int, V: int) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    prompt_len = torch.randint(2, P + 1, (B,), generator=g)
    resp_len = torch.randint(1, T + 1, (B,), generator=g)  # uneven: ranks hold different token counts
    resp_len[: B // 2] = torch.randint(1, 4, (B // 2,), generator=g)  # rank 0's rows are short
    ids = torch.randint(2, V, (B, P + T), generator=g)
    amask = torch.zeros(B, P + T, dtype=torch.long)
    rmask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        amask[b, P - prompt_len[b]:P + resp_len[b]] = 1
        rmask[b, :resp_len[b]] = True
    ids = torch.where(amask.bool(), ids, 0)
    ro = Rollout(ids, amask, P, rmask, [""] * B, resp_len)
    old_logp = -torch.rand(B, T, generator=g) * 3
    advantages = torch.randn(B, generator=g)
    return ro, old_logp, advantages


def main():
    out, objective = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "passk")
    d, device = distributed.init("cpu")
    torch.manual_seed(0)
    lm, _ = load_model("tiny", device=device, attention="sdpa")
    policy = Policy(lm).train()
    if d.enabled:
        distributed.shard(policy, d, device)
    cfg = Config(objective=objective, n=4, k=2, prompts_per_step=2, minibatches=1, grad_accum=1, lr=1e-3,
                 max_grad_norm=0.05, warmup_steps=0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ro, old_logp, adv = batch(8, 6, 12, 99)
    rows = torch.arange(8) if not d.enabled else torch.tensor(distributed.my_block(list(range(8)), d))
    stats = ppo_update(policy, optimizer, scheduler, ro.select(rows), old_logp[rows], None, adv[rows], cfg,
                       device, torch.Generator().manual_seed(0), d)
    full = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in policy.lm.named_parameters()}
    if d.main:
        torch.save({"params": full, "stats": stats}, out)
    distributed.shutdown(d)


if __name__ == "__main__":
    main()

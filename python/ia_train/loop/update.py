"""The PPO update of one rollout batch: epochs x minibatches x micro-batches, each micro-batch's fused
loss (linear_ppo_loss on hidden states, in length-sorted pieces: packing.py) and backward, then the
optimiser step. Under a launcher every micro-batch's loss is scaled so that the gradient FSDP averages
is the global batch's."""

from __future__ import annotations

import numpy as np
import torch

from ..config import Config
from ..rollout import Rollout
from ..runtime import distributed
from ..runtime.distributed import SINGLE, Dist
from .forward import packed_hidden, response_hidden
from .hooks import Kernels
from .packing import normaliser, piece_advantages, pieces
from .phases import PhaseClock


def loss_options(cfg: Config) -> dict:
    opts = {"clip_low": cfg.clip, "clip_high": cfg.clip_high, "kl_coef": cfg.kl_coef}
    if cfg.objective == "dr_grpo":
        # Dr. GRPO: sum over each response's tokens divided by a constant, not by its own length.
        opts.update(aggregation="seq-mean-token-sum-norm", norm_length=cfg.max_new_tokens)
    elif cfg.aggregation is not None:
        opts["aggregation"] = cfg.aggregation
    return opts


def local_counts(ro: Rollout, batches: list[torch.Tensor], cfg: Config) -> torch.Tensor:
    """Per micro-batch, the count the loss's aggregation divides by: valid tokens (token-mean) or
    sequences with a valid token (the seq-mean aggregations)."""
    token_mean = loss_options(cfg).get("aggregation", "token-mean") == "token-mean"
    mask = ro.response_mask
    return torch.tensor([float(mask[rows].sum() if token_mean else mask[rows].any(1).sum()) for rows in batches],
                        dtype=torch.float64)


def micro_batch_backward(model, ro: Rollout, rows: torch.Tensor, old_logp, ref_logp, advantages, cfg: Config,
                         device, scale: float = 1.0, pack: bool = True,
                         kernels: Kernels = Kernels()) -> tuple[float, dict]:
    """linear_ppo_loss over one micro-batch (`rows` of the rollout `ro`) and its backward, the
    gradients multiplied by `scale`, in length-sorted pieces (one piece when pack is False or when
    cutting does not pay), or with --packing varlen in one packed forward. Returns (the
    micro-batch's loss, its metrics: token-weighted means)."""
    opts = loss_options(cfg)
    parts = [rows]
    varlen = cfg.packing == "varlen"  # one packed forward: nothing to cut
    forward = packed_hidden if varlen else response_hidden
    if pack and not varlen:
        prompt_lengths = ro.attention_mask[:, :ro.prompt_width].sum(1)
        parts = pieces(prompt_lengths, ro.lengths, rows)
    if len(parts) > 1:
        opts.update(normaliser(ro.response_mask[rows], opts.get("aggregation", "token-mean")))
    total, sums, weight_sum = 0.0, {}, 0.0
    for piece in parts:
        h, targets, mask, weight, bias = forward(model, ro.select(piece), device)
        T = h.shape[1]
        loss, metrics = kernels.linear_ppo_loss(
            h, weight.to(h.dtype), targets, None if old_logp is None else old_logp[piece, :T].to(device),
            piece_advantages(advantages, piece, T).to(device), mask, bias=bias, temperature=cfg.temperature,
            backend=cfg.backend, ref_logp=None if ref_logp is None else ref_logp[piece, :T].to(device), **opts)
        (loss * scale).backward()
        total += float(loss.detach())
        w = float(mask.sum()) if len(parts) > 1 else 1.0
        weight_sum += w
        for key, value in metrics.items():
            if torch.is_tensor(value) and value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + w * float(value)
    return total, {key: value / max(weight_sum, 1e-30) for key, value in sums.items()}


def ppo_update(model, optimizer, scheduler, ro: Rollout, old_logp, ref_logp, advantages, cfg: Config,
               device, generator: torch.Generator, d: Dist = SINGLE, kernels: Kernels = Kernels(),
               clock: PhaseClock | None = None) -> dict:
    """cfg.ppo_epochs passes over the rollout batch, each in cfg.minibatches optimiser steps of
    cfg.grad_accum micro-batches. With several ranks each passes over its own rows, and every
    micro-batch's loss is scaled so that the averaged gradient is the global batch's
    (distributed.global_scale); the logged numbers are means over ranks. `clock` gets the loss
    (forward + backward) and optimiser phases."""
    clock = clock or PhaseClock()
    B = ro.input_ids.shape[0]
    mb = B // cfg.minibatches
    micro = mb // cfg.grad_accum
    sums: dict[str, float] = {}
    count = 0
    grad_norms = []
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        batches = [order[m * mb + a * micro: m * mb + (a + 1) * micro]
                   for m in range(cfg.minibatches) for a in range(cfg.grad_accum)]
        if d.enabled:
            counts = local_counts(ro, batches, cfg)
            scales = distributed.global_scale(counts, distributed.all_sum(counts, d), d).tolist()
        for m in range(cfg.minibatches):
            optimizer.zero_grad(set_to_none=True)
            for a in range(cfg.grad_accum):
                rows = batches[m * cfg.grad_accum + a]
                scale = scales[m * cfg.grad_accum + a] if d.enabled else 1.0
                # in length-sorted pieces (packing.py): compute scales with the real tokens. Under a
                # launcher one piece, as every rank must run the same number of backward passes.
                with clock("loss"):
                    loss, metrics = micro_batch_backward(model, ro, rows, old_logp, ref_logp, advantages, cfg, device,
                                                         scale / cfg.grad_accum, pack=not d.enabled, kernels=kernels)
                sums["loss"] = sums.get("loss", 0.0) + loss * scale
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
            with clock("optimizer"):
                if cfg.max_grad_norm > 0:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    grad_norms.append(distributed.grad_norm_value(norm))
                optimizer.step()
    scheduler.step()
    out = {key: value / count for key, value in sums.items()}
    if grad_norms:
        out["grad_norm"] = float(np.mean(grad_norms))
    return distributed.mean_over_ranks(out, d)

"""The training forward: the policy's body on a rollout batch, returning what the loss needs (final
hidden states at the response positions, the LM-head weight), never the logits; and the no-grad
log-probs of a batch's response tokens (old or reference log-probs)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import Config
from ..models import Policy
from ..rollout import Rollout
from .hooks import Kernels


def trim(ro: Rollout) -> tuple[Rollout, torch.Tensor]:
    """Drop columns that are padding in every row (left of the prompts, right of the responses)."""
    used = ro.attention_mask.any(0)
    first = int(used[:ro.prompt_width].long().argmax()) if used[:ro.prompt_width].any() else ro.prompt_width - 1
    first = min(first, ro.prompt_width - 1)  # keep the column whose hidden state predicts response token 0
    last = ro.prompt_width + int(ro.response_mask.any(0).nonzero().max()) + 1 if ro.response_mask.any() else ro.prompt_width + 1
    pos = ro.position_ids[:, first:last]
    return Rollout(ro.input_ids[:, first:last], ro.attention_mask[:, first:last], ro.prompt_width - first,
                   ro.response_mask[:, :last - ro.prompt_width], ro.texts, ro.lengths), pos


class ResponseBatch(NamedTuple):
    hidden: torch.Tensor  # [B, T, H] final hidden states at the positions that predict the response tokens
    targets: torch.Tensor  # [B, T] the response tokens
    mask: torch.Tensor  # [B, T] which of them are real (not padding)
    weight: torch.Tensor  # [V, H] the LM-head weight (gathered, under FSDP)
    bias: torch.Tensor | None


def response_hidden(policy: Policy, ro: Rollout, device: torch.device) -> ResponseBatch:
    """One forward of the policy's body on a rollout: what the loss needs, never the logits."""
    ro, pos = trim(ro)
    ids, amask = ro.input_ids.to(device), ro.attention_mask.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h, weight, bias = policy("hidden", input_ids=ids, attention_mask=amask, position_ids=pos.to(device),
                                 use_cache=False)
    return ResponseBatch(h[:, ro.prompt_width - 1:-1], ro.targets.to(device), ro.response_mask.to(device), weight, bias)


def packed_hidden(policy: Policy, ro: Rollout, device: torch.device) -> ResponseBatch:
    """response_hidden with every row's real tokens packed into one sequence (no padding computed):
    position ids restart at 0 for each row and no attention mask is given, which transformers turns
    into flash-attention's varlen kernel (cu_seqlens) under flash_attention_2 / fa4, and into a
    block-diagonal mask under SDPA (correct on a CPU, but quadratic in the packed length: the CPU's
    path is packing.py's length-sorted pieces). The hidden states are put back in the padded layout."""
    ro, _ = trim(ro)
    real = ro.attention_mask.bool()
    ids = ro.input_ids[real][None].to(device)
    pos = ro.position_ids[real][None].to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h, weight, bias = policy("hidden", input_ids=ids, position_ids=pos, use_cache=False)
    full = h.new_zeros(*real.shape, h.shape[-1])
    full[real.to(device)] = h[0]
    return ResponseBatch(full[:, ro.prompt_width - 1:-1], ro.targets.to(device), ro.response_mask.to(device),
                         weight, bias)


@torch.no_grad()
def sequence_logprobs(policy: Policy, ro: Rollout, cfg: Config, device, micro: int, kernels: Kernels) -> torch.Tensor:
    """[B, T] log-probs of the sampled tokens (zero on padding), computed in micro-batches."""
    out = torch.zeros(ro.response_mask.shape, dtype=torch.float32)
    for start in range(0, ro.input_ids.shape[0], micro):
        rows = slice(start, start + micro)
        h, targets, mask, weight, bias = response_hidden(policy, ro.select(rows), device)
        w = weight.to(h.dtype)
        t = torch.where(mask, targets, -100)
        lp = kernels.linear_logprobs(h, w, t, bias=bias, temperature=cfg.temperature, backend=cfg.backend)
        out[rows, :lp.shape[1]] = lp.float().cpu()
    return out

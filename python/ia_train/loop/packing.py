"""Length-sorted pieces of a training micro-batch, so that the training forward's compute scales with
the real tokens rather than with rows x the longest sequence (update.micro_batch_backward runs them).

A micro-batch's rows are sorted by length and cut into contiguous pieces; each piece runs its own
forward, trimmed to its own longest prompt and response, and the fused loss of each piece is
normalised by the whole micro-batch's count (`num_tokens` for token-mean, `num_sequences` for the
sequence means), so the sum of the pieces' losses and gradients is the micro-batch's. Where to cut
is a small dynamic programme over the sorted lengths: each piece costs its padded grid (rows x
(longest prompt + longest response)) plus a fixed per-forward overhead in token equivalents.
"""

from __future__ import annotations

import torch

PIECE_OVERHEAD_TOKENS = 256  # a forward + backward's fixed cost, in padded-token equivalents (tiny model, CPU)


def pieces(prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, rows: torch.Tensor,
           overhead: int = PIECE_OVERHEAD_TOKENS) -> list[torch.Tensor]:
    """`rows` (indices into the batch) cut into length-sorted pieces of least total padded cost."""
    order = torch.argsort(response_lengths[rows], stable=True)
    rows = rows[order]
    p, r = prompt_lengths[rows].tolist(), response_lengths[rows].tolist()
    n = len(rows)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of rows[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        max_p = 0
        for i in range(j - 1, -1, -1):  # the last piece is rows[i:j]; r is sorted, so its longest is r[j-1]
            max_p = max(max_p, p[i])
            cost = best[i] + (j - i) * (max_p + r[j - 1]) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(rows[cut[j]:j])
        j = cut[j]
    return out[::-1]


def normaliser(response_mask: torch.Tensor, aggregation: str) -> dict:
    """The micro-batch's denominator for linear_ppo_loss: its valid tokens (token-mean) or its
    sequences with a valid token (the sequence means)."""
    if aggregation == "token-mean":
        return {"num_tokens": float(response_mask.sum())}
    return {"num_sequences": float(response_mask.any(1).sum())}


def piece_advantages(advantages: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """The rows' advantages: [rows] per response, or [rows, width] per token (cut to the piece's width)."""
    adv = advantages[rows]
    return adv[:, :width] if adv.dim() == 2 else adv

"""From a step's rewards to the advantages the loss weighs each response (or token) by: Arora &
Zanette's length penalty, the objective's group estimator (ia_kernels.group_advantages), the k1
KL penalty in the reward, and OpenRLHF's batch whitening (--whiten-advantages)."""

from __future__ import annotations

from typing import Callable

import torch

from ..config import USES_K, Config
from .hooks import Kernels


def penalized_rewards(kernels: Kernels, cfg: Config, scores: torch.Tensor, lengths: torch.Tensor,
                      ended: torch.Tensor) -> torch.Tensor:
    """[B] the rewards the objective sees: the scores, or with --alpha > 0 Arora & Zanette's
    length-penalised correctness. Their rule: a response cut off at --max-new-tokens (no EOS) scores
    0 and stays out of its prompt's length statistics, else the penalty would reward the long tail
    it cuts."""
    if cfg.alpha <= 0:
        return scores
    return kernels.length_penalized_rewards(scores >= 0.5, lengths, cfg.n, alpha=cfg.alpha, finished=ended)


def sequence_advantages(kernels: Kernels, cfg: Config, rewards: torch.Tensor, answers: torch.Tensor | None,
                        device: torch.device) -> torch.Tensor:
    """[B] float32 on the CPU: the objective's estimator over each prompt's n samples (answers: the
    final-answer ids the majority objective votes with, -1 for none)."""
    return kernels.group_advantages(
        rewards.to(device), cfg.n, estimator=cfg.objective, k=cfg.k if cfg.objective in USES_K else None,
        answers=None if answers is None else answers.to(device)).float().cpu()


def kl_reward_advantages(advantages: torch.Tensor, sample_logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] advantages -> [B, T] with the k1 KL penalty in the reward, as OpenRLHF (Arora & Zanette's
    trainer) shapes it for its REINFORCE-family estimators: the task reward (after the group
    baseline) sits on the last token, every token t carries -beta * (log pi - log pi_ref)(t), and
    each token's advantage is its return, the sum of the rewards from t to the end (gamma = 1):
        A[i, t] = A[i] - beta * sum_{t' >= t} k1[i, t'].
    sample_logp are the sampling policy's log-probs (zero on padding). Also returns each response's
    summed k1 (its KL estimate, for the log)."""
    k1 = (sample_logp - ref_logp) * mask
    to_go = k1.flip(1).cumsum(1).flip(1)
    return (advantages[:, None] - beta * to_go) * mask, k1.sum(1)


def mean_abs_advantage(advantages: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Mean |advantage| per response ([B]) or per response token ([B, T])."""
    if advantages.dim() == 1:
        return float(advantages.abs().mean())
    return float(advantages.abs().sum() / response_mask.sum().clamp(min=1))


# OpenRLHF's floor on the variance before its rsqrt (NaiveReplayBuffer.normalize: clamp(min=1e-8))
WHITEN_MIN_VAR = 1e-8


def whiten_advantages(advantages: torch.Tensor, response_mask: torch.Tensor,
                      all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """--whiten-advantages: the step's advantages normalised over its whole rollout batch at token
    level, as OpenRLHF's NaiveReplayBuffer.normalize does before the loss (the trainer Arora &
    Zanette used, for every estimator but group_norm):
        mean = sum of A over the valid tokens / their number,
        var  = sum over the valid tokens of (A - mean)^2 / their number (ddof 0),
        A'   = (A - mean) / sqrt(max(var, 1e-8)),
    the sums taken over every rank (`all_sum`: runtime.distributed.all_sum under a launcher).
    [B] advantages are per-token constants there, so each response weighs by its token count: the
    mean subtracted is length-weighted, and with a length penalty it is coupled to the length under
    study. Returns the input's shape and dtype ([B, T]: 0 on padding); computed in float64."""
    mask = response_mask.to(device=advantages.device, dtype=torch.float64)
    a = advantages.to(torch.float64)
    weight = mask.sum(1) if a.dim() == 1 else mask  # tokens behind each value
    sums = all_sum(torch.stack([(a * weight).sum(), weight.sum()]))
    total, count = float(sums[0]), float(sums[1])
    if count == 0:
        return advantages
    mean = total / count
    var = float(all_sum(((a - mean) ** 2 * weight).sum().reshape(1))[0]) / count
    out = (a - mean) / max(var, WHITEN_MIN_VAR) ** 0.5
    if out.dim() == 2:
        out = out * mask
    return out.to(advantages.dtype)

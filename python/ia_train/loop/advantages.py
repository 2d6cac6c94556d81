"""From a step's rewards to the advantages the loss weighs each response (or token) by: Arora &
Zanette's length penalty, the objective's group estimator (ia_kernels.group_advantages) and the k1
KL penalty in the reward."""

from __future__ import annotations

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

"""What a response earns, the same in training and in the evaluation: the task's score, the rule for a
response cut off at --max-new-tokens without an end-of-sequence token (--truncated-reward), and the
final answer it casts in a majority vote."""

from __future__ import annotations

import torch

from .config import Config
from .rollout import Rollout


def finished(ro: Rollout, tokenizer) -> torch.Tensor:
    """[B] bool: which responses ended with the end-of-sequence token (the others were cut off at
    --max-new-tokens)."""
    return ((ro.targets == tokenizer.eos_token_id) & ro.response_mask).any(1)


def scored_rewards(task, problems: list, texts: list[str], ended: torch.Tensor, cfg: Config) -> torch.Tensor:
    """[B] float: the task's score of each response, 0 for a cut-off one (ended False) under
    --truncated-reward zero."""
    scores = torch.tensor(task.score_batch(problems, texts), dtype=torch.float32)
    if cfg.truncated_reward == "zero":
        scores = torch.where(ended, scores, torch.zeros_like(scores))
    return scores


def final_answers(task, problems: list, texts: list[str], ended: torch.Tensor, cfg: Config) -> list:
    """Each response's final answer for majority votes; None (no answer) for a cut-off one under
    --truncated-reward zero, or when the task finds none: such a response casts no vote (it
    abstains; see ia_kernels.maj_at_k)."""
    counts = ended.tolist() if cfg.truncated_reward == "zero" else [True] * len(texts)
    return [task.extract_answer(p, t) if e else None for p, t, e in zip(problems, texts, counts)]

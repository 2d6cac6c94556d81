"""Seeds: one call seeds Python, NumPy and torch; each step and each evaluation derives its own seed
from the run's, so a resumed run samples exactly as the uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The seed of training step `step` (-1: the evaluations, the same noise before and after)."""
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63

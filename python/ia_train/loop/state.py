"""The state a run's stages share (`Run`): settings, processes, model, task, optimiser, engine, hooks."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..models import Policy
from ..rollout import RolloutEngine
from ..runtime.distributed import Dist
from .hooks import Hooks


@dataclass
class Run:
    """Everything the stages of a run share."""

    cfg: Config
    d: Dist  # rank and world size (distributed.py); SINGLE without a launcher
    out: Path
    device: torch.device
    attention: str
    model: Policy  # the causal LM behind Policy's one forward; FSDP-sharded under a launcher
    tokenizer: object
    ref_model: Policy | None  # frozen, never sharded
    task: object
    train_problems: list
    eval_problems: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: RolloutEngine  # samples the rollouts and the evaluation's responses
    hooks: Hooks
    run_id: str  # ties config.json and every checkpoint to this run (runtime/rundir.py)
    t_start: float
    start_step: int = 0
    before: dict | None = None  # the evaluation of the initial model
    info: dict = field(default_factory=dict)

    def say(self, line: str, err: bool = False) -> None:
        """Prints on rank 0 only."""
        if self.d.main:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)

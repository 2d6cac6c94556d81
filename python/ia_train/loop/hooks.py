"""What a caller can substitute or observe in a run without patching module globals: the one object
tests, benchmarks and scripts hand to `loop.run` (and that the run keeps, as Run.hooks).

Every field is optional; `Hooks()` is a plain run. A benchmark reads the step's phase split from the
row `train_step` returns (time_generation, time_old_logp, ...), not from wrapped functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import ia_kernels


@dataclass(frozen=True)
class Kernels:
    """The ia_kernels ops the loop calls. A test passes its own (e.g. a spy that records the calls)."""

    group_advantages: Callable = ia_kernels.group_advantages
    length_penalized_rewards: Callable = ia_kernels.length_penalized_rewards
    linear_logprobs: Callable = ia_kernels.linear_logprobs
    linear_ppo_loss: Callable = ia_kernels.linear_ppo_loss


@dataclass
class Hooks:
    kernels: Kernels = field(default_factory=Kernels)
    # (source, *, device, attention) -> (model, tokenizer), instead of models.load_model
    load_model: Callable[..., tuple[Any, Any]] | None = None
    # the task to train and evaluate on, instead of tasks.load_task(cfg.task, cfg.task_options)
    task: Any = None
    # engine -> engine: wraps the rollout engine the run samples with (training and evaluation)
    wrap_engine: Callable[[Any], Any] | None = None
    # (run, row) after each step's update and metrics row, before its checkpoint
    on_step_end: Callable[[Any, dict], None] | None = None
    # (run) after the last step, before the evaluation of the trained model
    on_train_end: Callable[[Any], None] | None = None

"""The training loop, one module per stage:

    stages.py      the run's stages: setup -> resume -> log -> evaluate before -> train -> finish
    state.py       Run: what the stages share (settings, model, task, optimiser, engine, hooks)
    step.py        one step: rollouts -> rewards -> advantages -> PPO update, and its metrics row
    advantages.py  rewards -> advantages (length penalty, the objective's estimator, KL in the reward)
    update.py      the PPO update: epochs x minibatches x micro-batches of the fused loss, optimiser steps
    packing.py     length-sorted pieces of a micro-batch (compute follows the real tokens)
    forward.py     the policy's hidden states for the loss (never logits); no-grad log-probs
    phases.py      the step's phase split (time_generation, time_loss, ...)
    hooks.py       what tests and benchmarks substitute or observe (Hooks, Kernels)
    checks.py      every check of a training run's settings, before any work

What a response earns (the task's score, the truncation rule) is in ia_train/rewards.py, shared with
the evaluation; the rollouts in ia_train/rollout/.
"""

from .checks import training_config, validate
from .hooks import Hooks, Kernels
from .stages import run
from .state import Run
from .step import TrainingDiverged

__all__ = ["Hooks", "Kernels", "Run", "TrainingDiverged", "run", "training_config", "validate"]

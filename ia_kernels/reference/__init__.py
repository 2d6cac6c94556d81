"""Plain PyTorch references, run in float64 by tests and benchmarks: they define what the kernels
compute. One module per op family; everything is re-exported here."""

from . import advantages
from .advantages import group_advantages, length_penalized_rewards, maj_at_k, pass_at_k
from .logprobs import linear_logprobs
from .ppo import linear_ppo_loss, ppo_loss

__all__ = ["linear_logprobs", "ppo_loss", "linear_ppo_loss", "advantages", "group_advantages",
           "length_penalized_rewards", "pass_at_k", "maj_at_k"]

"""ia_kernels: fused kernels for inference-aware RL fine-tuning of language models.

Public API (see README.md and DESIGN notes in the docstrings):
    linear_logprobs           per-token log-probs (and entropy) at the LM head, logits never stored
    ppo_loss                  clipped PPO / GRPO / DAPO / GSPO / Dr. GRPO loss and metrics, gradient made in forward
    linear_ppo_loss           the same loss from hidden states at the LM head, fully fused, logits never stored
    available_backends        which backends each op has and whether they run on a device
"""

from .backends import available_backends
from .ops.logprobs import linear_logprobs
from .ops.linear_ppo import linear_ppo_loss
from .ops.ppo import ppo_loss

__all__ = ["linear_logprobs", "ppo_loss", "linear_ppo_loss", "available_backends"]
__version__ = "0.1.0"

"""ia_kernels: fused kernels for inference-aware RL fine-tuning of language models.

Public API (see README.md and DESIGN notes in the docstrings):
    linear_logprobs           per-token log-probs (and entropy) at the LM head, logits never stored
    available_backends        which backends each op has and whether they run on a device
"""

from .backends import available_backends
from .ops.logprobs import linear_logprobs

__all__ = ["linear_logprobs", "available_backends"]
__version__ = "0.1.0"

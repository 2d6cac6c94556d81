"""ia_kernels: fused kernels for inference-aware RL fine-tuning of language models.

Public API (see README.md and docs/design.md):
    linear_logprobs           per-token log-probs (and entropy) at the LM head, logits never stored
    ppo_loss                  clipped PPO / GRPO / DAPO / GSPO / Dr. GRPO loss and metrics, gradient made in forward
    linear_ppo_loss           the same loss from hidden states at the LM head, fully fused, logits never stored
    group_advantages          per-group advantages: reinforce, rloo, grpo, dr_grpo, pass@k (PKPO, Tang), Chen's pass@k, majority
    length_penalized_rewards  Arora & Zanette's length-penalised correctness rewards
    pass_at_k, group_pass_at_k, maj_at_k   evaluation estimators from n samples per problem
    paged_attention           attention of new tokens over a KV cache in fixed-size blocks (rollout engines)
    available_backends        which backends each op has and whether they run on a device
    ESTIMATORS, ESTIMATORS_USING_K   group_advantages's estimator names, and those that take a k
    NO_ANSWER                 the answer id (-1) of a sample without a final answer: it casts no vote
"""

from .backends import available_backends
from .core.numerics import ESTIMATOR_CODES as _ESTIMATOR_CODES
from .core.numerics import ESTIMATORS_USING_K, NO_ANSWER
from .ops.advantages import group_advantages, length_penalized_rewards
from .ops.eval_metrics import group_pass_at_k, maj_at_k, pass_at_k
from .ops.logprobs import linear_logprobs
from .ops.paged_attention import PagedAttentionPlan, paged_attention
from .ops.linear_ppo import linear_ppo_loss
from .ops.ppo import ppo_loss

ESTIMATORS = tuple(_ESTIMATOR_CODES)  # every estimator= that group_advantages accepts

__all__ = ["ESTIMATORS", "ESTIMATORS_USING_K", "NO_ANSWER", "linear_logprobs", "ppo_loss", "linear_ppo_loss", "group_advantages",
           "length_penalized_rewards", "pass_at_k", "group_pass_at_k", "maj_at_k", "paged_attention",
           "PagedAttentionPlan", "available_backends"]
__version__ = "0.1.0"

"""The model side of ia_train: loading a causal LM and its tokenizer (load.py), the policy wrapper the
loop trains (policy.py), the attention kernel (attention.py) and the bundled SmolLM2 (smollm2.py)."""

from .load import TINY_DIR, check_model_source, check_response_length, context_length, format_prompt, load_model
from .policy import Policy, body_and_head, checkpoint_activations

__all__ = ["TINY_DIR", "Policy", "body_and_head", "checkpoint_activations", "check_model_source", "check_response_length", "context_length",
           "format_prompt", "load_model"]

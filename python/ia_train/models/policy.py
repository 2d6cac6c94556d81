"""The policy as the loop sees it: the split of a causal LM into its body (which returns the final
hidden states) and its LM-head weight, so that the loss never sees logits, and `Policy`, the one
module whose forward serves every model call of the loop (what FSDP wraps)."""

from __future__ import annotations

import torch


def body_and_head(model):
    """The transformer body (input ids -> final normed hidden states) and the LM head (weight, bias).

    The PPO loss takes hidden states and the head weight, so full logits are never built in training.
    """
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no linear LM head; ia-train needs one")
    return body, head.weight, getattr(head, "bias", None)


def checkpoint_activations(lm) -> None:
    """Hugging Face's activation checkpointing on every decoder layer (non-reentrant, so it composes
    with FSDP2 and with inputs passed by keyword): in training the layers keep only their inputs and
    run their forward again in the backward pass. Sampling and the no-grad log-prob passes are
    untouched (a layer recomputes only when gradients are being recorded)."""
    from ..errors import ConfigError

    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: {type(lm).__name__} does not support activation checkpointing; "
                          "drop the flag (or use --grad-accum to cut the training forward's memory)")
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Policy(torch.nn.Module):
    """The causal LM behind one forward that serves every call the loop makes:
    policy("hidden", input_ids=..., attention_mask=..., position_ids=...) -> (final hidden states,
    LM-head weight, LM-head bias), and policy.generate(...) (Hugging Face generate).

    Under FSDP2 (distributed.shard) the LM-head weight the loss receives is the gathered (unsharded)
    parameter that FSDP's forward has put in place, exactly as the head's own forward would use it:
    every rank has different hidden states (its own sequences), so the loss needs the whole
    vocabulary on each rank (the vocabulary-parallel path of ia_kernels assumes the same hidden
    states on every rank and is not used here), and the weight's gradient then flows into FSDP's
    reduce-scatter like any other parameter's. Without FSDP it is a plain call, the same arithmetic.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, call: str, **kwargs):
        if call == "generate":
            return self.lm.generate(**kwargs)
        body, weight, bias = body_and_head(self.lm)
        return body(**kwargs).last_hidden_state, weight, bias

    def generate(self, **kwargs):
        return self(call="generate", **kwargs)

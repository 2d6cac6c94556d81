"""Reference of the fused linear log-prob op, run in float64 by tests and benchmarks.

They materialise everything and favour clarity over speed: they define what the kernels compute.
"""

from __future__ import annotations

import torch


def linear_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, ignore_index=-100,
                    return_entropy=False, logit_scale=None, softcap=None, dtype=torch.float64):
    """logp (and entropy) of `targets` under softmax(f(hidden @ weight.T + bias) / temperature),
    f(z) = softcap * tanh(logit_scale * z / softcap) (the identity without them).

    Computed in `dtype` (float64 by default). Ignored positions give logp 0 and carry no gradient
    through logp; their entropy is still defined and returned.
    """
    h = hidden.to(dtype)
    logits = h @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    ignored = targets == ignore_index
    safe_targets = torch.where(ignored, torch.zeros_like(targets), targets).long()
    logp = logprobs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(ignored, torch.zeros_like(logp), logp)
    if not return_entropy:
        return logp
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy

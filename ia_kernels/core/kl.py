"""The KL penalty's estimators as tensor maths, elementwise: the torch backend's PPO terms
(kernels/torch/ppo.py) and the loss's `kl_ref` metric (ops/ppo.py) both use them. The definition
is ia::kl_penalty (csrc/include/ia/ppo.h); the Triton and C++ kernels mirror it.
"""

from __future__ import annotations

import torch

from .numerics import MAX_LOG_RATIO


def kl_terms(logp, ref_logp, estimator):
    """(kl, dkl/dlogp) of ia::kl_penalty."""
    d = ref_logp - logp
    if estimator == "k1":
        return -d, torch.ones_like(d)
    if estimator == "k2":
        return 0.5 * d * d, -d
    dc = d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    e = torch.exp(dc)
    return e - dc - 1, torch.where(d.abs() > MAX_LOG_RATIO, 0.0, 1 - e)

"""Which attention kernel the model runs: flash-attention where installed and supported, else SDPA.

- `flash_attention_2`: the flash-attn package on an Ampere-or-newer GPU (transformers' own integration).
- `fa4`: flash-attn-4 (the CuTe DSL kernels, `flash_attn.cute`) on Hopper/Blackwell, registered here as
  a transformers attention function. It handles unpadded causal attention; batches with a padding
  mask (left-padded prompts during generation) go to SDPA, and the count of each is logged.
- `sdpa`: PyTorch's scaled_dot_product_attention (CPU, or GPUs without flash-attention).
"""

from __future__ import annotations

import importlib.util
from collections import Counter

import torch

CALLS: Counter = Counter()  # which kernel actually ran, for the log


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _register_fa4() -> None:
    from flash_attn.cute import flash_attn_func
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fa4_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if attention_mask is not None or query.dtype not in (torch.float16, torch.bfloat16):
            CALLS["sdpa (fa4 fallback)"] += 1
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        CALLS["fa4"] += 1
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, S, D] -> [B, S, H, D]
        out = flash_attn_func(q, k, v, softmax_scale=scaling, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out, None

    AttentionInterface.register("fa4", fa4_attention_forward)


def choose_attention(requested: str, device: torch.device) -> str:
    """The attn_implementation to load the model with (see module doc)."""
    cuda = device.type == "cuda"
    major = torch.cuda.get_device_capability(device)[0] if cuda else 0
    if requested == "auto":
        if cuda and major >= 9 and _has("flash_attn.cute"):
            requested = "fa4"
        elif cuda and major >= 8 and _has("flash_attn"):
            requested = "flash_attention_2"
        else:
            requested = "sdpa"
    if requested == "fa4":
        if not (cuda and major >= 9 and _has("flash_attn.cute")):
            raise ValueError("--attention fa4 needs flash-attn-4 (pip install flash-attn-4) on a Hopper or newer GPU")
        _register_fa4()
    if requested == "flash_attention_2" and not (cuda and _has("flash_attn")):
        raise ValueError("--attention flash_attention_2 needs the flash-attn package and a CUDA GPU")
    return requested

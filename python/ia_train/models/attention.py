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

from ..optional import missing_message

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
        if not cuda:
            raise ValueError("--attention fa4 runs flash-attn-4, which needs a Hopper or newer CUDA GPU; "
                             "use --attention sdpa on this machine")
        if major < 9:
            raise ValueError(f"--attention fa4 needs a Hopper or newer GPU (this one is sm_{major}x); "
                             "use --attention flash_attention_2 or sdpa")
        if not _has("flash_attn.cute"):
            raise ValueError(missing_message("flash_attn.cute", "--attention fa4"))
        try:
            _register_fa4()
        except ImportError as e:
            raise ValueError(f"--attention fa4: flash-attn-4 is installed but does not import "
                             f"({str(e).splitlines()[0][:120]}); reinstall it: pip install --pre -U flash-attn-4") from None
    if requested == "flash_attention_2":
        if not cuda:
            raise ValueError("--attention flash_attention_2 runs flash-attn, which needs a CUDA GPU; "
                             "use --attention sdpa on this machine")
        if not _has("flash_attn"):
            raise ValueError(missing_message("flash_attn", "--attention flash_attention_2"))
    return requested

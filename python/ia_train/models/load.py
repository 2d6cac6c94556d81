"""Where the policy comes from: the bundled tiny model, SmolLM2, or a local Hugging Face directory,
and the prompt format (the tokenizer's chat template when it has one, else the raw prompt)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ConfigError

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


def check_model_source(model: str) -> None:
    """Raise ConfigError (one line) when `model` cannot name a causal LM; reads config.json only."""
    if model == "tiny":
        if not (TINY_DIR / "model.safetensors").is_file():
            raise ConfigError(f"--model tiny: the bundled model is missing from {TINY_DIR}; "
                              "reinstall ia_kernels or run scripts/make_tiny_model.py")
        return
    if model == "smollm2":
        from ..optional import MissingPackage, require
        from .smollm2 import smollm2_gguf_path

        try:
            smollm2_gguf_path()
            require("gguf", "--model smollm2 (reading its GGUF file)")
        except (MissingPackage, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
        return
    path = Path(model)
    if not path.is_dir():
        raise ConfigError(f"--model {model}: not 'tiny', 'smollm2' or an existing local model directory; "
                          "give a directory with config.json and weights (nothing is downloaded)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"--model {model}: no config.json in that directory; point it at a Hugging Face model folder")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        causal = type(config) in AutoModelForCausalLM._model_mapping
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ConfigError(f"--model {model}: config.json is not a model transformers knows "
                          f"({str(e).splitlines()[0][:120]})") from None
    if not causal:
        raise ConfigError(f"--model {model}: a {type(config).__name__} is not a causal language model; "
                          "give a decoder-only model directory (e.g. Llama, Qwen2, SmolLM2)")


def context_length(source: str) -> int | None:
    """The longest sequence (prompt + response) the model was built for, from its config alone (no
    weights read); None when the config does not say. `source` has passed check_model_source."""
    if source == "smollm2":
        import gguf

        from .smollm2 import smollm2_gguf_path

        field = gguf.GGUFReader(smollm2_gguf_path()).fields.get("llama.context_length")
        return int(field.parts[field.data[0]][0]) if field is not None else None
    path = (TINY_DIR if source == "tiny" else Path(source)) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_response_length(source: str, max_new_tokens: int) -> None:
    """ConfigError when responses of max_new_tokens (after a prompt) cannot fit the model's context."""
    limit = context_length(source)
    if limit is not None and max_new_tokens >= limit:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} does not fit --model {source}: its context is {limit} "
                          "tokens, prompt included; lower --max-new-tokens")


def load_model(source: str, *, device: torch.device, attention: str):
    """(model, tokenizer) in float32 on `device`, tokenizer padding on the left (for generate).
    A model whose files cannot be read (missing or damaged weights) raises ConfigError (one line)."""
    from ..optional import MissingPackage

    try:
        return _load_model(source, device=device, attention=attention)
    except MissingPackage:
        raise
    except Exception as e:  # noqa: BLE001 - transformers, safetensors and gguf each raise their own types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--model {source}: cannot be loaded ({first})") from None


def _load_model(source: str, *, device: torch.device, attention: str):
    if source == "smollm2":
        from .smollm2 import load_smollm2  # written alongside the benchmark tasks; heavy, so lazy

        model, tokenizer = load_smollm2()
        if hasattr(model, "set_attn_implementation") and attention != "auto":
            model.set_attn_implementation(attention)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(TINY_DIR if source == "tiny" else source)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                     attn_implementation=attention)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def format_prompt(tokenizer, text: str) -> str:
    """The model-side prompt: the chat template with a generation prompt, when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return text

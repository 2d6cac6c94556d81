"""Rollout engines: what samples the n responses per prompt, behind one small interface.

    engine.generate(prompts, n, temperature=..., max_new_tokens=..., batch_size=...) -> Rollout

- `hf.HFEngine`: Hugging Face `generate`: any causal LM, any attention kernel.
- `builtin.BuiltinEngine`: ia_train's own decode loop for Llama-style models (see builtin.py); other
  architectures and sharded models fall back to the HF engine.
Every engine returns the same `batch.Rollout` layout. An external inference engine (vLLM) would
implement the same `generate` and return its sampling log-probs in Rollout.logprobs; it is not part
of this package yet.
"""

from __future__ import annotations

from typing import Protocol

from .batch import Rollout
from .builtin import BuiltinEngine
from .hf import HFEngine

ENGINES = ("builtin", "hf")


class RolloutEngine(Protocol):
    name: str
    model: object  # what samples (the policy), and the tokenizer of its prompts and responses
    tokenizer: object

    def generate(self, prompts: list[str], n: int, *, temperature: float, max_new_tokens: int,
                 batch_size: int = 512) -> Rollout: ...


def make_engine(kind: str, model, tokenizer) -> RolloutEngine:
    """The engine `--rollout` names: 'builtin' (other architectures and sharded models fall back to
    'hf') or 'hf'."""
    if kind == "hf":
        return HFEngine(model, tokenizer)
    if kind == "builtin":
        return BuiltinEngine(model, tokenizer)
    raise ValueError(f"unknown rollout engine {kind!r}; one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "BuiltinEngine", "HFEngine", "Rollout", "RolloutEngine", "make_engine"]

"""The Hugging Face engine: `generate` samples the responses (any causal LM, any attention kernel)."""

from __future__ import annotations

import torch

from .batch import Rollout, make_rollout, stack_chunks


class HFEngine:
    """Hugging Face `generate` (see `sample`)."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompts, n, *, temperature, max_new_tokens, batch_size=512) -> Rollout:
        return sample(self.model, self.tokenizer, prompts, n, temperature=temperature,
                      max_new_tokens=max_new_tokens, batch_size=batch_size)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], n: int, *, temperature: float, max_new_tokens: int,
           batch_size: int = 512) -> Rollout:
    """n samples for each prompt (pure temperature sampling: no top-k/top-p, so the policy the loss
    sees is exactly the one that sampled). Prompts are processed in chunks of batch_size // n."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    per_chunk = max(1, batch_size // n)
    chunks = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), per_chunk):
        enc = tokenizer(prompts[start:start + per_chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, num_return_sequences=n, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
        P = enc["input_ids"].shape[1]
        prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0)
        chunks.append((out[:, :P], prompt_mask, out[:, P:]))
    model.train(was_training)
    prompt_ids, prompt_mask, response = stack_chunks(chunks, tokenizer.pad_token_id)
    # Keep tokens up to and including the first EOS; what generate wrote after it is padding.
    is_eos = response == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return make_rollout(tokenizer, prompt_ids, prompt_mask, response, ~after_eos)

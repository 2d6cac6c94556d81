"""The rollout batch every engine returns: n sampled responses per prompt, laid out for the loss.

Layout of a batch of B = prompts * n sequences (samples of one prompt contiguous, as the group
estimators expect):
    input_ids [B, P + T]: the prompt left-padded to width P, then the response right-padded to T
    response_mask [B, T]: true on response tokens up to and including the first EOS
Hidden state t predicts token t + 1, so the response's log-probs come from hidden[:, P-1 : P+T-1].
Position ids count only real tokens, as `generate` does with left padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    prompt_width: int  # P
    response_mask: torch.Tensor  # [B, T] bool
    texts: list[str]  # decoded responses (special tokens dropped)
    lengths: torch.Tensor  # [B] response tokens (EOS included)
    # [B, T] the sampler's log-probs of the response tokens (0 on padding) when the engine keeps them
    # (engine.BuiltinEngine); the policy that sampled is the one before the update, so they serve as
    # the PPO's old log-probs without another forward
    logprobs: torch.Tensor | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]

    def select(self, rows: torch.Tensor | slice) -> "Rollout":
        texts = self.texts[rows] if isinstance(rows, slice) else [self.texts[i] for i in rows.tolist()]
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.prompt_width,
                       self.response_mask[rows], texts, self.lengths[rows],
                       None if self.logprobs is None else self.logprobs[rows])


def stack_chunks(chunks, pad: int) -> list[torch.Tensor]:
    """Chunks of (prompt ids [b, p], prompt mask [b, p], response ids [b, t], *per-response-token
    tensors [b, t]) as one batch: prompts left-padded to the widest (ids with `pad`, mask with 0),
    responses right-padded to the longest (ids with `pad`, the rest with 0)."""
    P = max(c[0].shape[1] for c in chunks)
    T = max(c[2].shape[1] for c in chunks)
    columns = [[] for _ in chunks[0]]
    for chunk in chunks:
        lp, lr = P - chunk[0].shape[1], T - chunk[2].shape[1]
        for j, x in enumerate(chunk):
            widths = (lp, 0) if j < 2 else (0, lr)
            columns[j].append(torch.nn.functional.pad(x, widths, value=pad if j in (0, 2) else 0))
    return [torch.cat(c) for c in columns]


def make_rollout(tokenizer, prompt_ids, prompt_mask, response, response_mask, logprobs=None) -> Rollout:
    """The Rollout of a stacked batch: response tokens outside response_mask become padding, the
    texts are decoded, lengths counted (EOS included), the sampler's log-probs (if any) kept on the mask."""
    response = torch.where(response_mask, response, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    return Rollout(torch.cat([prompt_ids, response], 1), torch.cat([prompt_mask, response_mask.long()], 1),
                   prompt_ids.shape[1], response_mask, texts, response_mask.sum(1),
                   None if logprobs is None else torch.where(response_mask, logprobs, 0.0).cpu())

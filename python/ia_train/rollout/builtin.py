"""The built-in engine: ia_train's own decode loop for Llama-style causal LMs (Llama, Mistral, Qwen2,
SmolLM2, the bundled tiny model). It runs the model's own modules and weights (embedding, norms,
projections, rotary table, MLP, LM head) in a hand-written forward with
    * a static KV cache: per layer one [B, kv_heads, P + T, head_dim] buffer for keys and one for
      values, allocated once per batch and written in place (no per-step concatenation);
    * finished rows leaving the batch: a row that emitted EOS stops being sampled at once, and the
      cache rows of finished sequences are compacted away (in place, only the columns written so
      far) as soon as they make up 1/8 of the rows in the cache, so at most 1/8 of a step's rows are
      finished ones and a long sample no longer drags the whole batch;
    * each prompt prefilled once, its keys and values copied to its n samples;
    * fused q/k/v and gate/up projections (the weights concatenated once per batch);
    * the sampler's log-probs kept (Rollout.logprobs), the old log-probs of the PPO update.
Sampling is HF's: softmax(logits / temperature), one multinomial draw per row (no top-k/top-p), so
the distribution is the same (tests compare token frequencies against `generate` and the decode
loop's logits against the model's full-sequence forward). The random stream differs from
`generate`'s (finished rows draw nothing).
Architectures it does not recognise (anything but the Llama-style layer: pre-norm RMSNorm, rotary
q/k, optional q/k/v bias, gated MLP, no sliding window, no q/k norms) fall back to the HF engine;
`builtin_unsupported(model)` says why. On a GPU the same loop runs with PyTorch SDPA (which picks
flash / memory-efficient kernels itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import Rollout, make_rollout, stack_chunks
from .hf import HFEngine

_LLAMA_LIKE = {"llama", "mistral", "qwen2"}


def _causal_lm(model):
    """The Hugging Face causal LM behind a model or ia_train's Policy wrapper."""
    return getattr(model, "lm", model)


def builtin_unsupported(model) -> str | None:
    """Why the built-in decode loop cannot run this model (None when it can)."""
    lm = _causal_lm(model)
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in _LLAMA_LIKE:
        return f"model type {kind!r} is not one of {sorted(_LLAMA_LIKE)}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
        return "sliding-window attention"
    if any(type(p).__name__ == "DTensor" for p in lm.parameters()):
        return "sharded (FSDP) parameters"
    try:
        layer = lm.model.layers[0]
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(attn, name)
        for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
            getattr(layer.mlp, name)
        lm.model.embed_tokens, lm.model.norm, lm.model.rotary_emb, lm.lm_head  # noqa: B018
    except AttributeError as e:
        return f"unexpected module layout ({e})"
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        return "q/k norms"
    if getattr(lm.config, "rope_parameters", {}).get("rope_type", "default") not in ("default", "linear", "llama3"):
        return "a dynamic rope type"
    return None


class _Weights:
    """The model's weights as the decode loop uses them (fused q/k/v and gate/up), read once per batch."""

    def __init__(self, lm):
        cfg = lm.config
        self.lm = lm
        self.embed = lm.model.embed_tokens.weight
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.layers = []
        for layer in lm.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv_b = None
            if a.q_proj.bias is not None:
                qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            self.layers.append(dict(
                ln1=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), qkv_b=qkv_b,
                o=a.o_proj.weight, o_b=a.o_proj.bias, scaling=a.scaling,
                ln2=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]), act=m.act_fn,
                down=m.down_proj.weight, inter=m.gate_proj.weight.shape[0]))
        self.norm = (lm.model.norm.weight, lm.model.norm.variance_epsilon)
        self.head, self.head_b = lm.lm_head.weight, lm.lm_head.bias
        self.rotary = lm.model.rotary_emb

    def rope_table(self, length: int, device, dtype):
        pos = torch.arange(length, device=device)[None]
        cos, sin = self.rotary(torch.empty(0, device=device, dtype=dtype), pos)
        return cos[0], sin[0]  # [length, head_dim]


def _rms(x, w_eps):
    w, eps = w_eps
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class DecodeLoop:
    """One batch of left-padded prompts through the model with a static KV cache.

    Each prompt is run once and its cache rows copied to its n samples. prefill() runs the prompts
    and returns the logits of their last position (n rows per prompt); step(tokens) appends one
    token to each row in the cache and returns the next logits; keep(rows) drops the other rows from
    the cache (compaction in place)."""

    def __init__(self, w: _Weights, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 n: int = 1):
        self.w, self.n = w, n
        P = prompt_ids.shape[1]
        B = prompt_ids.shape[0] * n
        self.P, self.L = P, P + max_new_tokens
        dev, dt = prompt_ids.device, w.embed.dtype
        shape = (B, w.kv_heads, self.L, w.head_dim)
        self.k = [torch.empty(shape, device=dev, dtype=dt) for _ in w.layers]
        self.v = [torch.empty(shape, device=dev, dtype=dt) for _ in w.layers]
        self.valid = torch.zeros(B, self.L, dtype=torch.bool, device=dev)  # which cache columns are keys
        self.valid[:, :P] = prompt_mask.bool().repeat_interleave(n, 0)
        self.cos, self.sin = w.rope_table(self.L, dev, dt)
        self.ids, self.mask = prompt_ids, prompt_mask
        self.pos = prompt_mask.long().sum(1).repeat_interleave(n, 0)  # the position of each row's next token
        self.rows = B  # rows in the cache
        self.t = 0  # cache columns written

    def _layers(self, x, cos, sin, attn_mask, t0, t1):
        w, A = self.w, x.shape[0]
        S = x.shape[1]
        hq, hk, d = w.heads, w.kv_heads, w.head_dim
        for i, lw in enumerate(w.layers):
            h = _rms(x, lw["ln1"])
            qkv = F.linear(h, lw["qkv"], lw["qkv_b"])
            q = qkv[..., :hq * d].view(A, S, hq, d).transpose(1, 2)
            k = qkv[..., hq * d:(hq + hk) * d].view(A, S, hk, d).transpose(1, 2)
            v = qkv[..., (hq + hk) * d:].view(A, S, hk, d).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.k[i][:A, :, t0:t1] = k
            self.v[i][:A, :, t0:t1] = v
            o = F.scaled_dot_product_attention(q, self.k[i][:A, :, :t1], self.v[i][:A, :, :t1], attn_mask=attn_mask,
                                               scale=lw["scaling"], enable_gqa=hq != hk)
            x = x + F.linear(o.transpose(1, 2).reshape(A, S, hq * d), lw["o"], lw["o_b"])
            gu = F.linear(_rms(x, lw["ln2"]), lw["gate_up"])
            x = x + F.linear(lw["act"](gu[..., :lw["inter"]]) * gu[..., lw["inter"]:], lw["down"])
        return x

    def _logits(self, x):
        return F.linear(_rms(x, self.w.norm), self.w.head, self.w.head_b)

    def prefill(self) -> torch.Tensor:
        """[B, V] logits of the token after each prompt."""
        P, mask = self.P, self.mask.bool()
        pos = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
        x = F.embedding(self.ids, self.w.embed)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, P, d]
        causal = torch.ones(P, P, dtype=torch.bool, device=x.device).tril()
        # padding keys are masked; a padding query sees itself, so every row of the softmax is finite
        attn = causal & (mask[:, None, :] | torch.eye(P, dtype=torch.bool, device=x.device))
        x = self._layers(x, cos, sin, attn[:, None], 0, P)
        if self.n > 1:  # each prompt's keys and values to its n samples
            Bp = self.ids.shape[0]
            for buf in (*self.k, *self.v):
                buf[:, :, :P] = buf[:Bp, :, :P].repeat_interleave(self.n, 0)
        self.t = P
        return self._logits(x[:, -1]).repeat_interleave(self.n, 0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Appends tokens [rows] (one per row in the cache) and returns the next [rows, V] logits."""
        t = self.t
        self.valid[:self.rows, t] = True
        x = F.embedding(tokens[:, None], self.w.embed)
        cos, sin = self.cos[self.pos][:, None, None], self.sin[self.pos][:, None, None]  # [A, 1, 1, d]
        x = self._layers(x, cos, sin, self.valid[:self.rows, None, None, :t + 1], t, t + 1)
        self.t, self.pos = t + 1, self.pos + 1
        return self._logits(x[:, 0])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these cache rows (indices into the current rows, increasing), in place."""
        A, t = rows.numel(), self.t
        for buf in (*self.k, *self.v):
            buf[:A, :, :t] = buf[rows, :, :t]
        self.valid[:A] = self.valid[rows]
        self.pos = self.pos[rows]
        self.rows = A


def sample_tokens(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their log-probs) drawn from softmax(logits / temperature), as `generate` samples."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    tokens = torch.multinomial(logp.exp(), 1)[:, 0]
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


@torch.no_grad()
def decode(lm, prompt_ids, prompt_mask, *, eos: int, pad: int, max_new_tokens: int, temperature: float,
           n: int = 1, forced: torch.Tensor | None = None, keep_logits: bool = False):
    """Samples up to max_new_tokens for each of n rows per prompt (B = prompts * n rows, a prompt's
    samples contiguous; each row stops at its EOS).

    Returns (tokens [B, T] padded with `pad`, log-probs [B, T] (0 on padding), lengths [B], logits
    [B, T, V] or None); T is the longest response. `forced` [B, T'] feeds these tokens instead of
    sampling (teacher forcing, for tests); keep_logits returns every step's logits."""
    w = _Weights(lm)
    B = prompt_ids.shape[0] * n
    dev = prompt_ids.device
    loop = DecodeLoop(w, prompt_ids, prompt_mask, max_new_tokens, n)
    out = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=dev)
    out_lp = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
    lengths = torch.zeros(B, dtype=torch.long, device=dev)
    all_logits = torch.zeros(B, max_new_tokens, w.head.shape[0], device=dev) if keep_logits else None
    ids = torch.arange(B, device=dev)  # the sequence held in each cache row
    alive = torch.ones(B, dtype=torch.bool, device=dev)  # per cache row: not finished
    logits = loop.prefill()
    T = 0
    for s in range(max_new_tokens):
        if forced is not None:
            tok = forced[ids, s]
            lp = torch.log_softmax(logits.float() / temperature, -1).gather(1, tok[:, None])[:, 0]
        else:
            tok, lp = sample_tokens(logits, temperature)
        live = ids[alive]
        out[live, s] = tok[alive]
        out_lp[live, s] = lp[alive]
        if keep_logits:
            all_logits[live, s] = logits[alive].float()
        lengths[live] += 1
        T = s + 1
        alive &= tok != eos
        n_alive = int(alive.sum())
        if n_alive == 0 or s + 1 == max_new_tokens:
            break
        if (loop.rows - n_alive) * 8 >= loop.rows:  # compact: finished rows leave the cache
            keep = alive.nonzero()[:, 0]
            loop.keep(keep)
            ids, alive, tok = ids[keep], alive[keep], tok[keep]
        logits = loop.step(tok)
    return out[:, :T], out_lp[:, :T], lengths, (all_logits[:, :T] if keep_logits else None)


class BuiltinEngine:
    """The built-in decode loop (see the module doc); falls back to HFEngine for other models."""

    name = "builtin"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.unsupported = builtin_unsupported(model)
        self.fallback = HFEngine(model, tokenizer) if self.unsupported else None

    @torch.no_grad()
    def generate(self, prompts, n, *, temperature, max_new_tokens, batch_size=512) -> Rollout:
        if self.fallback is not None:
            return self.fallback.generate(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
        lm, tok = _causal_lm(self.model), self.tokenizer
        device = next(lm.parameters()).device
        eos, pad = tok.eos_token_id, tok.pad_token_id
        per_chunk = max(1, batch_size // n)
        chunks = []
        for start in range(0, len(prompts), per_chunk):
            enc = tok(prompts[start:start + per_chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
            r_ids, r_lp, r_len, _ = decode(lm, enc["input_ids"], enc["attention_mask"], eos=eos, pad=pad,
                                           max_new_tokens=max_new_tokens, temperature=temperature, n=n)
            p_ids = enc["input_ids"].repeat_interleave(n, 0)
            p_mask = enc["attention_mask"].repeat_interleave(n, 0)
            # Response tokens up to and including the first EOS.
            r_mask = torch.arange(r_ids.shape[1], device=device)[None] < r_len[:, None]
            chunks.append((p_ids, p_mask, r_ids, r_mask.long(), r_lp))
        prompt_ids, prompt_mask, response, response_mask, logprobs = stack_chunks(chunks, pad)
        return make_rollout(tok, prompt_ids, prompt_mask, response, response_mask.bool(), logprobs)

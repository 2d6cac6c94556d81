"""The built-in engine: ia_train's own decode loop for Llama-style causal LMs (Llama, Mistral, Qwen2,
SmolLM2, the bundled tiny model), with continuous batching over a paged KV cache. It runs the model's
own modules and weights (embedding, norms, projections, rotary table, MLP, LM head) in a hand-written
forward over packed tokens:

    * continuous batching: up to `batch_size` samples run at once; a sample that emits EOS (or
      reaches max_new_tokens) leaves at once and its slot goes to the next waiting (prompt, sample)
      pair, so a long response no longer holds a shrinking batch;
    * a paged KV cache (kv_cache.py): blocks of `block_size` positions and a block table per row, so
      memory follows the tokens actually held, not rows x the longest response; a prompt's blocks
      are shared by its n samples (each gets its own copy of the last, partial one);
    * chunked prefill beside the decode steps: each iteration's forward packs one token per running
      sample and up to `prefill_tokens` prompt tokens of waiting prompts, so the weights are read once
      for both (one GEMM per projection) and a prompt's prefill never stalls the samples that run;
    * attention through ia_kernels.paged_attention (the native CPU kernel on CPU; on a GPU with
      flash-attention's paged kernel when asked for: `IA_TRAIN_PAGED_BACKEND=cuda`, not run on a
      GPU yet, so not the default there: the torch backend is);
    * fused q/k/v and gate/up projections (the weights concatenated once per call);
    * the sampler's log-probs kept (Rollout.logprobs), the old log-probs of the PPO update.
Sampling is HF's: softmax(logits / temperature), one multinomial draw per sample (no top-k/top-p), so
the distribution is the same (tests compare token frequencies against `generate` and the decode
loop's logits against the model's full-sequence forward). The random stream differs from
`generate`'s. Architectures it does not recognise (anything but the Llama-style layer: pre-norm
RMSNorm, rotary q/k, optional q/k/v bias, gated MLP, no sliding window, no q/k norms) fall back to
the HF engine; `builtin_unsupported(model)` says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ia_kernels

from .batch import Rollout, make_rollout
from .hf import HFEngine
from .kv_cache import PagedKVCache

_LLAMA_LIKE = {"llama", "mistral", "qwen2"}
# ia_kernels.paged_attention's backend (None: its automatic choice; "cuda": flash-attention's paged
# kernel, opt-in until a GPU run verifies it)
PAGED_BACKEND = os.environ.get("IA_TRAIN_PAGED_BACKEND") or None


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

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: PagedKVCache, slots: torch.Tensor,
                table: torch.Tensor, seqlens: torch.Tensor, cu_q: torch.Tensor, cos, sin) -> torch.Tensor:
        """Packed tokens [N] at `positions` through every layer: their keys and values written to the
        cache at `slots`, attention over each row's blocks (`table`, `seqlens`, `cu_q` as
        ia_kernels.paged_attention takes them). Returns the final hidden states [N, hidden] (not normed)."""
        N = ids.shape[0]
        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        plan = ia_kernels.PagedAttentionPlan(table, seqlens, cu_q, num_blocks=cache.num_blocks,
                                             block_size=cache.block_size, tokens=N)
        x = F.embedding(ids, self.embed)
        c, s = cos[positions][:, None], sin[positions][:, None]  # [N, 1, d]
        for i, lw in enumerate(self.layers):
            qkv = F.linear(_rms(x, lw["ln1"]), lw["qkv"], lw["qkv_b"])
            q = _rotate(qkv[:, :hq * d].view(N, hq, d), c, s)
            k = _rotate(qkv[:, hq * d:(hq + hk) * d].view(N, hk, d), c, s)
            cache.write(i, slots, k.to(cache.dtype), qkv[:, (hq + hk) * d:].reshape(N, hk, d).to(cache.dtype))
            o = plan.run(q.to(cache.dtype), cache.k[i], cache.v[i], scale=lw["scaling"], backend=PAGED_BACKEND)
            o = o.to(x.dtype)
            x = x + F.linear(o.reshape(N, hq * d), lw["o"], lw["o_b"])
            gu = F.linear(_rms(x, lw["ln2"]), lw["gate_up"])
            x = x + F.linear(lw["act"](gu[..., :lw["inter"]]) * gu[..., lw["inter"]:], lw["down"])
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms(x, self.norm), self.head, self.head_b)


def _rms(x, w_eps):
    w, eps = w_eps
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def sample_tokens(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their log-probs) drawn from softmax(logits / temperature), the distribution `generate`
    samples. By the inverse CDF: one uniform number per row against the cumulative probabilities
    (summed in float64, so a token's interval is its probability to ~1e-16), where torch.multinomial
    draws an exponential number per vocabulary entry (on a 49k vocabulary, most of a small model's
    sampling time). Logits that are not finite raise, as multinomial does."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    cdf = logp.exp().cumsum(-1, dtype=torch.float64)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):
        raise RuntimeError("the policy's next-token distribution is not finite (NaN or inf logits); the weights "
                           "may have diverged")
    u = torch.rand(total.shape, dtype=torch.float64, device=logits.device) * total
    tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1)[:, 0]
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


@dataclass
class _Prompt:
    """A prompt being prefilled: its tokens, the blocks that hold them, how far the prefill got."""

    index: int
    ids: list[int]
    blocks: list[int] = field(default_factory=list)
    done: int = 0


class ContinuousBatch:
    """Samples n responses to each prompt with continuous batching over a paged KV cache (module doc).

    run() returns (tokens [prompts * n, T] padded with `pad`, log-probs [prompts * n, T] (0 on
    padding), lengths [prompts * n], logits [prompts * n, T, V] or None); sample j of prompt i is row
    i * n + j; T is the longest response. `forced` [prompts * n, T'] feeds these tokens instead of
    sampling (teacher forcing, for tests); keep_logits keeps every step's logits."""

    def __init__(self, w: _Weights, prompts: list[list[int]], n: int, *, eos: int, pad: int, max_new_tokens: int,
                 temperature: float, batch_size: int, block_size: int = 32, prefill_tokens: int = 512,
                 forced: torch.Tensor | None = None, keep_logits: bool = False):
        if any(not p for p in prompts):
            raise ValueError("a prompt has no tokens")
        self.w, self.n, self.eos, self.T, self.temperature = w, n, eos, max_new_tokens, temperature
        self.capacity = max(n, batch_size)  # samples running at once (a prompt's n start together)
        self.prefill_tokens = max(1, prefill_tokens)
        self.forced, self.keep_logits = forced, keep_logits
        self.device = w.embed.device
        self.pending = [_Prompt(i, list(ids)) for i, ids in enumerate(prompts)][::-1]  # popped from the end
        self.prefilling: list[_Prompt] = []
        if PAGED_BACKEND == "cuda":  # flash-attention's paged kernel: blocks of 256, a half-precision cache
            block_size, cache_dtype = 256, torch.bfloat16
        else:
            cache_dtype = w.embed.dtype
        longest = max(len(p) for p in prompts)
        per_row = -(-(longest + max_new_tokens) // block_size) + 1
        per_prompt = -(-longest // block_size)
        blocks = self.capacity * per_row + per_prompt * (-(-self.capacity // n) + 1)
        self.cache = PagedKVCache(len(w.layers), blocks, block_size, w.kv_heads, w.head_dim, cache_dtype,
                                  self.device)
        self.cos, self.sin = w.rope_table(longest + max_new_tokens + 1, self.device, w.embed.dtype)
        rows = len(prompts) * n
        self.tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=self.device)
        self.logprobs = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=self.device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.all_logits = torch.zeros(rows, max_new_tokens, w.head.shape[0], device=self.device) if keep_logits else None
        self.max_blocks = per_row
        # the running samples, one entry per row of these tensors (kept in step; rows leave when done)
        self.row_id = torch.empty(0, dtype=torch.long, device=self.device)  # output row of each sample
        self.last = torch.empty(0, dtype=torch.long, device=self.device)  # its last sampled token
        self.position = torch.empty(0, dtype=torch.long, device=self.device)  # where that token goes
        self.table = torch.empty(0, self.max_blocks, dtype=torch.int32, device=self.device)
        self.reserved = 0  # slots promised to prompts still prefilling

    # -- the loop ---------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self):
        while self.pending or self.prefilling or self.row_id.numel():
            self._admit()
            self._step()
        T = int(self.lengths.max()) if self.lengths.numel() else 0
        return (self.tokens[:, :T], self.logprobs[:, :T], self.lengths,
                self.all_logits[:, :T] if self.keep_logits else None)

    def _admit(self) -> None:
        """Waiting prompts start their prefill while their n samples fit beside the running ones."""
        while self.pending and self.row_id.numel() + self.reserved + self.n <= self.capacity:
            self.prefilling.append(self.pending.pop())
            self.reserved += self.n

    def _step(self) -> None:
        """One forward: a token per running sample, then prompt chunks up to the prefill budget."""
        bs, A = self.cache.block_size, self.row_id.numel()
        self._grow_tables()
        ids, positions, slots = [self.last], [self.position], []
        if A:
            slots.append(self.table[torch.arange(A, device=self.device), self.position // bs].long() * bs
                         + self.position % bs)
        tables, seqlens, q_lens = [self.table], [self.position + 1], [torch.ones(A, dtype=torch.long, device=self.device)]
        chunks, budget = [], self.prefill_tokens
        for p in self.prefilling:
            if budget == 0:
                break
            take = min(budget, len(p.ids) - p.done)
            budget -= take
            while len(p.blocks) * bs < p.done + take:
                p.blocks.append(self.cache.allocate())
            pos = torch.arange(p.done, p.done + take, device=self.device)
            block_ids = torch.tensor(p.blocks, dtype=torch.long, device=self.device)
            ids.append(torch.tensor(p.ids[p.done:p.done + take], device=self.device))
            positions.append(pos)
            slots.append(block_ids[pos // bs] * bs + pos % bs)
            row = torch.zeros(1, self.max_blocks, dtype=torch.int32, device=self.device)
            row[0, :len(p.blocks)] = block_ids.to(torch.int32)
            tables.append(row)
            seqlens.append(torch.tensor([p.done + take], device=self.device))
            q_lens.append(torch.tensor([take], device=self.device))
            p.done += take
            chunks.append(p)
        q_lens = torch.cat(q_lens)
        cu = torch.nn.functional.pad(q_lens.cumsum(0), (1, 0))
        x = self.w.forward(torch.cat(ids), torch.cat(positions), self.cache, torch.cat(slots),
                           torch.cat(tables), torch.cat(seqlens), cu, self.cos, self.sin)
        finished_prefill = [p for p in chunks if p.done == len(p.ids)]
        # logits: every running sample's next token, and the first token of each prompt whose prefill ended
        last_of_prompt = [int(cu[A + chunks.index(p) + 1]) - 1 for p in finished_prefill]
        picked = torch.cat([x[:A], x[last_of_prompt]]) if last_of_prompt else x[:A]
        logits = self.w.logits(picked)
        self._advance(logits[:A])
        for j, p in enumerate(finished_prefill):
            self.prefilling.remove(p)
            self.reserved -= self.n
            self._fork(p, logits[A + j])

    def _grow_tables(self) -> None:
        """A block for each running sample whose next token starts one."""
        bs = self.cache.block_size
        need = (self.position % bs == 0).nonzero()[:, 0].tolist()
        for r in need:
            self.table[r, int(self.position[r]) // bs] = self.cache.allocate()

    def _draw(self, logits: torch.Tensor, rows: torch.Tensor, step: torch.Tensor):
        """(tokens, log-probs) for these output rows at these response positions."""
        if self.forced is not None:
            tok = self.forced[rows, step]
            lp = torch.log_softmax(logits.float() / self.temperature, -1).gather(1, tok[:, None])[:, 0]
        else:
            tok, lp = sample_tokens(logits, self.temperature)
        self.tokens[rows, step] = tok
        self.logprobs[rows, step] = lp
        if self.keep_logits:
            self.all_logits[rows, step] = logits.float()
        self.lengths[rows] = step + 1
        return tok

    def _advance(self, logits: torch.Tensor) -> None:
        """The running samples' next tokens; those that end leave and give back their blocks."""
        if not self.row_id.numel():
            return
        step = self.lengths[self.row_id]
        tok = self._draw(logits, self.row_id, step)
        done = (tok == self.eos) | (step + 1 >= self.T)
        self.last, self.position = tok, self.position + 1
        if bool(done.any()):
            bs = self.cache.block_size
            for r in done.nonzero()[:, 0].tolist():
                used = (int(self.position[r]) - 1) // bs + 1  # the blocks holding positions < position
                self.cache.release(self.table[r, :used].tolist())
            keep = (~done).nonzero()[:, 0]
            self.row_id, self.last, self.position, self.table = (
                self.row_id[keep], self.last[keep], self.position[keep], self.table[keep])

    def _fork(self, p: _Prompt, logits: torch.Tensor) -> None:
        """A prefilled prompt becomes its n samples: the full blocks shared, the partial last one copied."""
        n, bs, P = self.n, self.cache.block_size, len(p.ids)
        rows = torch.arange(p.index * n, (p.index + 1) * n, device=self.device)
        tok = self._draw(logits.expand(n, -1), rows, torch.zeros(n, dtype=torch.long, device=self.device))
        live = tok != self.eos if self.T > 1 else torch.zeros(n, dtype=torch.bool, device=self.device)
        full, partial = P // bs, P % bs
        tables = torch.zeros(n, self.max_blocks, dtype=torch.int32, device=self.device)
        for j in live.nonzero()[:, 0].tolist():
            for b in p.blocks[:full]:
                self.cache.share(b)
            tables[j, :full] = torch.tensor(p.blocks[:full], dtype=torch.int32)
            if partial:
                own = self.cache.allocate()
                self.cache.copy_block(p.blocks[full], own, partial)
                tables[j, full] = own
        self.cache.release(p.blocks)
        keep = live.nonzero()[:, 0]
        self.row_id = torch.cat([self.row_id, rows[keep]])
        self.last = torch.cat([self.last, tok[keep]])
        self.position = torch.cat([self.position, torch.full((keep.numel(),), P, dtype=torch.long, device=self.device)])
        self.table = torch.cat([self.table, tables[keep]])


@torch.no_grad()
def decode(lm, prompts: list[list[int]], n: int, *, eos: int, pad: int, max_new_tokens: int, temperature: float,
           batch_size: int = 512, forced: torch.Tensor | None = None, keep_logits: bool = False, **options):
    """ContinuousBatch(...).run() for a causal LM and prompts given as token lists (see its doc)."""
    return ContinuousBatch(_Weights(lm), prompts, n, eos=eos, pad=pad, max_new_tokens=max_new_tokens,
                           temperature=temperature, batch_size=batch_size, forced=forced, keep_logits=keep_logits,
                           **options).run()


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
        ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        r_ids, r_lp, r_len, _ = decode(lm, ids, n, eos=tok.eos_token_id, pad=tok.pad_token_id,
                                       max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
        # the batch layout every engine returns: prompts left-padded, responses right-padded
        width = max(len(p) for p in ids)
        prompt_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, p in enumerate(ids):
            prompt_ids[i, width - len(p):] = torch.tensor(p)
            prompt_mask[i, width - len(p):] = 1
        prompt_ids, prompt_mask = (x.to(device).repeat_interleave(n, 0) for x in (prompt_ids, prompt_mask))
        r_mask = torch.arange(r_ids.shape[1], device=device)[None] < r_len[:, None]
        return make_rollout(tok, prompt_ids, prompt_mask, r_ids, r_mask, r_lp)

"""The built-in decode loop (ia_train.rollout.builtin): its logits equal the model's full-sequence forward, it
samples the distribution Hugging Face `generate` samples, and its rollouts have rollout.hf.sample's layout."""

import math
from collections import Counter

import pytest
import torch

from ia_train.models import load_model
from ia_train.rollout import BuiltinEngine, HFEngine, make_engine
from ia_train.rollout.builtin import ContinuousBatch, _Weights, builtin_unsupported, decode

PROMPTS = ["5 - 4 - 7 =", "1 + 2 =", "3 + 3 + 9 =", "8 - 1 ="]


@pytest.fixture(scope="module")
def tiny():
    lm, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    return lm.eval(), tok


def prompt_ids(tok, prompts):
    return tok(prompts, add_special_tokens=False)["input_ids"]


def forced_tokens(tok, rows, T, seed=0, eos_every=3):
    """Teacher-forced responses: random tokens, EOS at a different step in most rows."""
    g = torch.Generator().manual_seed(seed)
    forced = torch.randint(2, 99, (rows, T), generator=g)
    for i in range(rows):
        if i % eos_every:
            forced[i, (5 * i) % T] = tok.eos_token_id
    return forced


def full_forward_check(lm, ids, n, tokens, lengths, logits):
    """Each row's kept logits against one full forward of its prompt and response (relative error)."""
    worst = 0.0
    for r in range(len(ids) * n):
        p, L = ids[r // n], int(lengths[r])
        seq = torch.tensor(p + tokens[r, :L].tolist())[None]
        with torch.no_grad():
            ref = lm(input_ids=seq).logits[0, len(p) - 1:len(p) - 1 + L]
        worst = max(worst, float((logits[r, :L] - ref).abs().max() / ref.abs().max()))
    return worst


@pytest.mark.parametrize("batch_size,block_size,prefill_tokens", [
    (4, 4, 5),       # one prompt's 4 samples at a time: every slot refilled; prompts prefilled in chunks of 5
    (8, 32, 512),    # two prompts at a time, a prompt inside one block
    (512, 16, 3),    # everything at once, prefill spread over several steps beside the decode steps
])
def test_decode_logits_equal_the_full_forward(tiny, batch_size, block_size, prefill_tokens):
    """Teacher-forced tokens with EOS at different steps, so samples leave and others take their slots;
    prompts of different lengths; the result does not depend on the batch size, block size or prefill
    chunking."""
    lm, tok = tiny
    ids, n, T = prompt_ids(tok, PROMPTS), 4, 24
    forced = forced_tokens(tok, len(ids) * n, T)
    tokens, lp, lengths, logits = decode(lm, ids, n, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=T,
                                         temperature=1.0, forced=forced, keep_logits=True, batch_size=batch_size,
                                         block_size=block_size, prefill_tokens=prefill_tokens)
    first_eos = [(forced[i] == tok.eos_token_id).nonzero()[0, 0].item() + 1 if (forced[i] == tok.eos_token_id).any()
                 else T for i in range(len(ids) * n)]
    assert lengths.tolist() == first_eos
    valid = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    assert torch.equal(tokens[valid], forced[:, :tokens.shape[1]][valid])
    assert full_forward_check(lm, ids, n, tokens, lengths, logits) < 1e-4
    ref_lp = torch.log_softmax(logits, -1).gather(2, tokens[..., None])[..., 0]
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=1e-5)
    assert (lp[~valid] == 0).all() and (tokens[~valid] == tok.pad_token_id).all()


def test_slots_are_refilled_and_memory_follows_the_tokens_held(tiny):
    """A long tail (one sample of 200 tokens, 63 of 4): the running samples never exceed the batch
    size, a finished sample's slot is refilled at once (the whole batch takes about as many steps as
    the longest sample plus the short ones' turns), and the KV cache's peak follows the tokens held:
    far below what 64 rows x 200 positions would take."""
    lm, tok = tiny
    ids = prompt_ids(tok, ["1 + 2 ="] * 16)
    n, T, bs = 4, 200, 16
    forced = torch.full((64, T), 7)
    forced[1:, 3] = tok.eos_token_id  # every sample but the first ends after 4 tokens
    w = _Weights(lm)
    batch = ContinuousBatch(w, ids, n, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=T, temperature=1.0,
                            batch_size=8, block_size=bs, forced=forced)
    steps = []
    real_step = batch._step

    def counting_step():
        assert batch.row_id.numel() <= 8
        steps.append(batch.row_id.numel())
        real_step()

    batch._step = counting_step
    tokens, _, lengths, _ = batch.run()
    assert lengths[0] == T and (lengths[1:] == 4).all()
    assert len(steps) < T + 40  # 63 short samples run beside the long one, 7 at a time
    prompt_len = len(ids[0])
    worst_static = 64 * -(-(prompt_len + T) // bs)
    assert batch.cache.peak <= 8 * 2 + -(-(prompt_len + T) // bs) + 4, batch.cache.peak
    assert batch.cache.peak * 5 < worst_static
    assert batch.cache.in_use == 0  # every block came back


def test_a_prompts_blocks_are_shared_by_its_samples(tiny):
    lm, tok = tiny
    ids = prompt_ids(tok, ["3 + 3 + 9 = 1 + 2 + 3 + 4 + 5 + 6 ="])
    bs, n = 4, 8
    full = len(ids[0]) // bs
    batch = ContinuousBatch(_Weights(lm), ids, n, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=2,
                            temperature=1.0, batch_size=n, block_size=bs, forced=torch.full((n, 2), 7))
    batch.run()
    assert full >= 3
    # each sample holds the shared full blocks once between them, and a copy of the partial one plus
    # its own response block at most
    assert batch.cache.peak <= full + 1 + 2 * n, batch.cache.peak
    assert batch.cache.in_use == 0


@pytest.mark.parametrize("T", [1, 2])
def test_first_token_eos_and_one_token_responses(tiny, T):
    lm, tok = tiny
    ids = prompt_ids(tok, PROMPTS)
    forced = torch.full((len(ids) * 2, T), 7)
    forced[::2, 0] = tok.eos_token_id
    tokens, lp, lengths, _ = decode(lm, ids, 2, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=T,
                                    temperature=1.0, forced=forced)
    assert lengths.tolist() == [1, T] * len(ids)
    assert (tokens[::2, 0] == tok.eos_token_id).all()


def exact_joint(lm, tok, prompt, temperature):
    """p(t1, t2 | prompt) under softmax(logits / temperature), over the whole vocabulary."""
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    V = lm.config.vocab_size
    with torch.no_grad():
        p1 = torch.softmax(lm(**enc).logits[0, -1].double() / temperature, -1)
        ids = torch.cat([enc["input_ids"].repeat(V, 1), torch.arange(V)[:, None]], 1)
        p2 = torch.softmax(lm(input_ids=ids).logits[:, -1].double() / temperature, -1)
    return p1[:, None] * p2  # [V, V]


def chi_square(counts: Counter, probs: torch.Tensor, n: int) -> tuple[float, int]:
    """Pearson's statistic over cells with expected count >= 5 (the rest pooled into one cell)."""
    expected = probs.flatten() * n
    big = (expected >= 5).nonzero()[:, 0].tolist()
    stat, rest_obs, rest_exp = 0.0, n, float(n)
    for c in big:
        o, e = counts.get(c, 0), float(expected[c])
        stat += (o - e) ** 2 / e
        rest_obs -= o
        rest_exp -= e
    if rest_exp >= 5:
        stat += (rest_obs - rest_exp) ** 2 / rest_exp
        return stat, len(big)
    return stat, len(big) - 1


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_sampling_matches_generate(tiny, temperature):
    """The first two sampled tokens of many samples: both engines pass a chi-square test against the
    model's exact joint distribution (df + 6 sqrt(2 df): a false alarm well below 1e-6), and their
    empirical distributions are as close to each other as two samples of that size should be."""
    lm, tok = tiny
    prompt, n = "5 - 4 - 7 = -", 2500  # a prompt whose next tokens are uncertain
    joint = exact_joint(lm, tok, prompt, temperature)
    V = joint.shape[0]
    freqs = {}
    for engine in (HFEngine(lm, tok), BuiltinEngine(lm, tok)):
        torch.manual_seed(7)
        ro = engine.generate([prompt], n, temperature=temperature, max_new_tokens=2, batch_size=n)
        t = ro.targets
        cells = (t[:, 0] * V + torch.where(ro.response_mask[:, 1], t[:, 1], tok.eos_token_id)).tolist()
        counts = Counter(cells)
        stat, df = chi_square(counts, joint, n)
        assert stat < df + 6 * math.sqrt(2 * df), (engine.name, stat, df)
        freqs[engine.name] = torch.zeros(V * V).index_add_(0, torch.tensor(cells), torch.ones(n)) / n
    tv = 0.5 * (freqs["hf"] - freqs["builtin"]).abs().sum()
    assert tv < 0.08, tv


def test_builtin_rollout_layout(tiny):
    """Same layout as rollout.sample: left-padded prompts, responses up to and including EOS, texts,
    lengths; the kept log-probs are the policy's log-probs of the sampled tokens."""
    lm, tok = tiny
    torch.manual_seed(0)
    ro = BuiltinEngine(lm, tok).generate(PROMPTS, 4, temperature=1.0, max_new_tokens=40, batch_size=8)
    B = len(PROMPTS) * 4
    assert ro.input_ids.shape[0] == B and ro.response_mask.shape == ro.logprobs.shape
    assert torch.equal(ro.lengths, ro.response_mask.sum(1))
    eos = tok.eos_token_id
    for i in range(B):
        r = ro.targets[i, :ro.lengths[i]].tolist()
        assert eos not in r[:-1] and (r[-1] == eos or len(r) == 40)
        assert tok.decode(ro.targets[i, :ro.lengths[i]], skip_special_tokens=True) == ro.texts[i]
    P = ro.prompt_width
    with torch.no_grad():
        logits = lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids).logits
    ref = torch.log_softmax(logits[:, P - 1:-1], -1).gather(2, ro.targets[..., None])[..., 0]
    # fp32 through two attention implementations (the paged kernel, HF's SDPA over a padded batch) that
    # sum in different orders: log-probs agree to a few 1e-5
    torch.testing.assert_close(ro.logprobs[ro.response_mask], ref[ro.response_mask], atol=3e-5, rtol=1e-5)
    assert (ro.logprobs[~ro.response_mask] == 0).all()


def test_make_engine_and_fallback(tiny):
    lm, tok = tiny
    assert builtin_unsupported(lm) is None
    assert make_engine("hf", lm, tok).name == "hf"
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("nope", lm, tok)

    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()

    engine = make_engine("builtin", Other(), tok)
    assert "gpt2" in builtin_unsupported(Other()) and isinstance(engine.fallback, HFEngine)


def _small(tmp_path, **over):
    from ia_train.config import Config
    from ia_train.loop import validate

    cfg = Config(**{**dict(model="tiny", task="chain_sum", prompts_per_step=2, n=4, k=2, max_new_tokens=16,
                           eval_problems=0, steps=2, lr=3e-3, warmup_steps=1, tensorboard=False, threads=1,
                           rollout="builtin", out=str(tmp_path / "run")), **over})
    validate(cfg)
    return cfg


@pytest.mark.parametrize("minibatches", [1, 2])
def test_training_takes_old_logprobs_without_a_pass(tmp_path, minibatches):
    """One optimiser step per batch: old_logp=None (the loss pass computes them); two: the sampler's
    log-probs from the built-in engine. Either way no separate no-grad pass runs."""
    import ia_kernels
    from ia_train.loop import Hooks, Kernels, run

    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])
        return ia_kernels.linear_ppo_loss(*args, **kwargs)

    def no_logprob_pass(*args, **kwargs):
        pytest.fail("an old-logp pass ran")

    kernels = Kernels(linear_ppo_loss=spy, linear_logprobs=no_logprob_pass)
    summary = run(_small(tmp_path, minibatches=minibatches), Hooks(kernels=kernels))
    assert summary["last_step"]["step"] == 2 and len(calls) == 2 * minibatches
    if minibatches == 1:
        assert all(c is None for c in calls)
    else:
        assert all(c is not None and (c <= 0).all() for c in calls)


def test_rollout_setting_is_checked():
    from ia_train.config import Config, ConfigError
    from ia_train.loop import validate

    with pytest.raises(ConfigError, match="--rollout 'vllm' is unknown"):
        validate(Config(rollout="vllm"))

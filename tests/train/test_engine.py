"""The built-in decode loop (ia_train.rollout.builtin): its logits equal the model's full-sequence forward, it
samples the distribution Hugging Face `generate` samples, and its rollouts have rollout.hf.sample's layout."""

import math
from collections import Counter

import pytest
import torch

from ia_train.models import load_model
from ia_train.rollout import BuiltinEngine, HFEngine, make_engine
from ia_train.rollout.builtin import builtin_unsupported, decode

PROMPTS = ["5 - 4 - 7 =", "1 + 2 =", "3 + 3 + 9 =", "8 - 1 ="]


@pytest.fixture(scope="module")
def tiny():
    lm, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    return lm.eval(), tok


def full_forward_logits(lm, prompt_ids, prompt_mask, response, lengths):
    P = prompt_ids.shape[1]
    rmask = (torch.arange(response.shape[1])[None] < lengths[:, None]).long()
    ids, mask = torch.cat([prompt_ids, response], 1), torch.cat([prompt_mask, rmask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, P - 1:-1], rmask.bool()


def test_decode_logits_equal_the_full_forward(tiny):
    """Teacher-forced tokens with EOS at different steps, so rows leave the cache (compaction) while
    the others go on; left-padded prompts of different lengths."""
    lm, tok = tiny
    enc = tok(PROMPTS * 4, return_tensors="pt", padding=True, add_special_tokens=False)
    B, T = enc["input_ids"].shape[0], 24
    g = torch.Generator().manual_seed(0)
    forced = torch.randint(2, lm.config.vocab_size, (B, T), generator=g)
    for i in range(B):
        if i % 3:
            forced[i, (5 * i) % T] = tok.eos_token_id
    ids, lp, lengths, logits = decode(lm, enc["input_ids"], enc["attention_mask"], eos=tok.eos_token_id,
                                      pad=tok.pad_token_id, max_new_tokens=T, temperature=1.0, forced=forced,
                                      keep_logits=True)
    first_eos = [(forced[i] == tok.eos_token_id).nonzero()[0, 0].item() + 1 if (forced[i] == tok.eos_token_id).any()
                 else T for i in range(B)]
    assert lengths.tolist() == first_eos
    ref, valid = full_forward_logits(lm, enc["input_ids"], enc["attention_mask"], ids, lengths)
    assert torch.equal(ids[valid], forced[:, :ids.shape[1]][valid])
    assert (logits - ref).abs()[valid].max() < 1e-4 * ref.abs()[valid].max()
    ref_lp = torch.log_softmax(ref, -1).gather(2, ids[..., None])[..., 0]
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=1e-5)
    assert (lp[~valid] == 0).all()


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
    torch.testing.assert_close(ro.logprobs[ro.response_mask], ref[ro.response_mask], atol=1e-5, rtol=1e-5)
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

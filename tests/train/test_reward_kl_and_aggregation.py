"""Arora & Zanette's recipe in ia-train: the k1 KL penalty in the reward (shaped as OpenRLHF, their
trainer, does for REINFORCE-family estimators) and the per-sequence token-mean aggregation."""

import pytest
import torch

from ia_train.config import Config
from ia_train.errors import ConfigError
from ia_train.loop import Hooks, run, validate
from ia_train.loop.advantages import kl_reward_advantages
from ia_train.runtime.logger import read_metrics

from test_train_runs import Spy, small_config, spying


def openrlhf_returns(seq_reward, logp, ref_logp, mask, beta):
    """Written from OpenRLHF's description, in float64 with loops: per token the reward
    -beta * (logp - ref_logp), plus the (baseline-shaped) sequence reward on the last real token;
    each token's advantage is its return, the undiscounted sum of the rewards from it to the end."""
    B, T = logp.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        last = max(t for t in range(T) if mask[i, t])
        rewards = [(-beta * (float(logp[i, t]) - float(ref_logp[i, t])) if mask[i, t] else 0.0) for t in range(T)]
        rewards[last] += float(seq_reward[i])
        running = 0.0
        for t in reversed(range(T)):
            running += rewards[t]
            out[i, t] = running if mask[i, t] else 0.0
    return out


def test_kl_in_the_reward_matches_openrlhf_shaping():
    g = torch.Generator().manual_seed(3)
    B, T, beta = 6, 9, 0.03
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    ref_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    got, kl_seq = kl_reward_advantages(adv, logp, ref_logp, mask.double(), beta)
    want = openrlhf_returns(adv, logp, ref_logp, mask, beta)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert torch.allclose(kl_seq, ((logp - ref_logp) * mask).sum(1), atol=1e-12, rtol=0)
    assert torch.all(got[~mask] == 0)
    # The last real token carries only its own KL term; beta = 0 gives the sequence advantage on every token.
    last = lengths - 1
    rows = torch.arange(B)
    assert torch.allclose(got[rows, last], adv - beta * (logp - ref_logp)[rows, last], atol=1e-12)
    zero, _ = kl_reward_advantages(adv, logp, ref_logp, mask.double(), 0.0)
    assert torch.equal(zero, adv[:, None] * mask)


def test_a_run_with_the_recipe_puts_the_kl_in_the_token_advantages(tmp_path):
    # long enough responses that some are right, so the first step's update moves the policy
    cfg = small_config(tmp_path, objective="rloo", steps=2, alpha=0.2, kl_reward_coef=0.05, minibatches=1,
                       aggregation="seq-mean-token-mean", prompts_per_step=4, max_new_tokens=80)
    advantages, losses = Spy("group_advantages"), Spy("linear_ppo_loss")
    ends = []  # the number of loss calls at the end of each step (a step's batch may run in several pieces)
    hooks = spying(advantages, losses)
    hooks.on_step_end = lambda r, row: ends.append(len(losses.calls))
    run(cfg, hooks)
    rows = read_metrics(tmp_path / "run")
    assert len(ends) == 2 and len(advantages.calls) == 2
    for step, (start, end) in enumerate(zip([0] + ends[:-1], ends)):
        calls, seq_adv = losses.calls[start:end], advantages.calls[step][2]
        for args, kw, _ in calls:
            targets, token_adv, mask = args[2], args[4], args[5]
            assert kw["aggregation"] == "seq-mean-token-mean"
            assert kw["ref_logp"] is None and kw["kl_coef"] == 0  # the KL is in the reward only
            assert token_adv.shape == targets.shape and torch.all(token_adv[~mask] == 0)
            if step == 0:  # nothing has been updated yet: the policy is the reference, so k1 is 0 everywhere
                first = token_adv[:, :1].expand_as(token_adv)  # each row constant over its tokens
                assert torch.allclose(token_adv[mask], first[mask], atol=1e-6)
        # the first token's advantage is the sequence's minus beta times its whole-response k1 sum
        # (the loss sees the rows shuffled and in pieces: compare means, and sets at step 0)
        firsts = torch.cat([args[4][:, 0] for args, _, _ in calls])
        assert firsts.numel() == seq_adv.numel()
        kl_first = (seq_adv.float().mean() - firsts.mean()) / cfg.kl_reward_coef
        assert float(kl_first) == pytest.approx(rows[step]["kl_k1"], abs=1e-4)
        if step == 0:
            assert torch.allclose(firsts.sort().values, seq_adv.float().sort().values, atol=1e-6)
            # the old log-probs are the sampler's, computed incrementally over the KV cache, the
            # reference's come from a full forward: equal to float32 rounding (a few 1e-6 per token)
            assert rows[0]["kl_k1"] == pytest.approx(0, abs=1e-5)
    assert rows[0]["accuracy"] > 0 and rows[1]["kl_k1"] != 0  # one update moved the policy off the reference


def test_a_run_with_the_loss_kl_only_sends_the_reference_to_the_loss(tmp_path):
    cfg = small_config(tmp_path, objective="rloo", steps=1, kl_coef=0.05, minibatches=1)
    losses = Spy("linear_ppo_loss")
    run(cfg, spying(losses))
    (args, kw, _), = losses.calls
    assert kw["ref_logp"] is not None and kw["kl_coef"] == 0.05 and args[4].dim() == 1
    assert "kl_k1" not in read_metrics(tmp_path / "run")[0]


@pytest.mark.parametrize("over,message", [
    ({"aggregation": "seq-sum"}, "--aggregation 'seq-sum' is unknown; use one of: token-mean, seq-mean-token-mean, "
                                 "seq-mean-token-sum"),
    ({"objective": "dr_grpo", "aggregation": "token-mean"},
     "--objective dr_grpo normalises by a constant length (its definition), so --aggregation token-mean would change it"),
    ({"kl_reward_coef": -0.001}, "--kl-reward-coef must be 0 or more, got -0.001"),
    ({"kl_reward_coef": float("nan")}, "--kl-reward-coef must be a finite number, got nan"),
])
def test_recipe_settings_are_checked(over, message, tmp_path):
    cfg = Config(**{"out": str(tmp_path / "run"), **over})
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value)


def test_the_length_recipes_follow_arora_and_zanette():
    """configs/recipes/*length*: their alpha family, RLOO, the k1 reward KL at beta 0.001, the
    per-sequence token mean and OpenRLHF's batch whitening; each file validates as a config."""
    from pathlib import Path

    import yaml

    from ia_train.config import FIELDS

    files = sorted((Path(__file__).parents[2] / "configs" / "recipes").glob("*length_alpha*.yaml"))
    alphas = set()
    for f in files:
        settings = yaml.safe_load(f.read_text())
        assert set(settings) <= set(FIELDS), f.name
        assert (settings["objective"], settings["kl_reward_coef"], settings["aggregation"],
                settings["whiten_advantages"]) == ("rloo", 0.001, "seq-mean-token-mean", True), f.name
        alphas.add(settings["alpha"])
        text = f.read_text()
        assert "Arora & Zanette" in text and "OpenRLHF" in text, f.name  # says where the values come from
    assert alphas == {0.0, 0.05, 0.1, 0.2, 0.4}


def test_a_response_cut_off_without_eos_earns_nothing_unless_asked():
    """--truncated-reward zero (the default): a correct answer followed by more tokens up to the limit
    (a policy running on past its answer) scores 0 in training and is no answer in the evaluation."""
    from ia_train.models import load_model
    from ia_train.rewards import final_answers, finished, scored_rewards
    from ia_train.rollout import Rollout
    from ia_train.tasks import load_task

    _, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    task = load_task("chain_sum", {})
    problem = task.problems("eval", 1, 0)[0]
    text = f"{problem.prompt} {problem.answer}\n<answer>{problem.answer}</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ended, cut = ids + [tok.eos_token_id], ids + tok("xx", add_special_tokens=False)["input_ids"]
    width = max(len(ended), len(cut))
    targets = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in (ended, cut)])
    mask = torch.tensor([[i < len(x) for i in range(width)] for x in (ended, cut)])
    ro = Rollout(targets, mask, 0, mask, [text, text + "xx"], mask.sum(1))
    ended = finished(ro, tok)
    assert ended.tolist() == [True, False]
    zero = scored_rewards(task, [problem, problem], ro.texts, ended, Config(truncated_reward="zero"))
    score = scored_rewards(task, [problem, problem], ro.texts, ended, Config(truncated_reward="score"))
    assert zero.tolist() == [1.0, 0.0] and score.tolist() == [1.0, 1.0]
    answer = task.extract_answer(problem, text)
    assert answer is not None
    assert final_answers(task, [problem, problem], ro.texts, ended, Config(truncated_reward="zero")) == [answer, None]
    assert final_answers(task, [problem, problem], ro.texts, ended, Config(truncated_reward="score")) == [answer, answer]


def test_truncated_reward_is_checked(tmp_path):
    for over, message in (({"truncated_reward": "half"}, "--truncated-reward 'half' is unknown; use zero or score"),
                          ({"truncated_reward": "score", "alpha": 0.1},
                           "--truncated-reward score with --alpha > 0: Arora & Zanette's length penalty scores")):
        with pytest.raises(ConfigError) as e:
            validate(Config(out=str(tmp_path / "run"), **over))
        assert message in str(e.value)


@pytest.mark.parametrize("rule", ["zero", "score"])
def test_the_majority_objective_gives_cut_off_responses_no_vote(rule, tmp_path):
    """Training votes as the evaluation does: under --truncated-reward zero a response cut off
    without EOS casts no vote (answer id -1), so running on past an answer cannot sway the vote."""

    class WithoutEos:
        """The run's engine, with every response's EOS replaced by another token: each reads as cut off,
        its text (and so its answer) unchanged."""

        def __init__(self, engine):
            self.engine, self.name, self.model, self.tokenizer = engine, engine.name, engine.model, engine.tokenizer

        def generate(self, *args, **kwargs):
            ro = self.engine.generate(*args, **kwargs)
            eos = self.tokenizer.eos_token_id
            response = ro.input_ids[:, ro.prompt_width:]
            assert (response == eos).any()  # some responses did end
            response[response == eos] = 1 if eos != 1 else 2
            return ro

    cfg = small_config(tmp_path, objective="majority", k=4, n=4, steps=1, max_new_tokens=80, truncated_reward=rule)
    advantages = Spy("group_advantages")
    run(cfg, Hooks(kernels=spying(advantages).kernels, wrap_engine=WithoutEos))
    (_, kw, adv), = advantages.calls
    if rule == "zero":
        assert torch.all(kw["answers"] == -1) and torch.all(adv == 0)
    else:  # the same responses, scored by their text, do vote
        assert torch.any(kw["answers"] >= 0)

"""--whiten-advantages: OpenRLHF's batch normalisation of the advantages (NaiveReplayBuffer.normalize),
against a float64 loop written from OpenRLHF's code, for [B] and [B, T] advantages, over one rank and
split across two, and in a run."""

import threading

import pytest
import torch

from ia_train.loop import run
from ia_train.loop.advantages import whiten_advantages

from test_train_runs import Spy, small_config, spying


def openrlhf_normalize(advantages: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """OpenRLHF's steps, in float64: the replay buffer splits the batch into one item per response,
    removes each item's right padding (the action mask's trailing zeros), so an item's advantages are
    its valid tokens' ([B] advantages: the sequence's value on each of its tokens, as the returns of
    the REINFORCE family carry it); normalize() concatenates the items, takes mean = sum / number of
    actions, std = sum of (x - mean)^2 over the actions / their number (clamped at 1e-8), and sets
    each item to (x - mean) * rsqrt(std). Returns the items (valid tokens only)."""
    items = []
    for i in range(mask.shape[0]):
        valid = int(mask[i].sum())  # right padding removed: the first `valid` tokens
        if advantages.dim() == 1:
            items.append(torch.full((valid,), float(advantages[i]), dtype=torch.float64))
        else:
            items.append(advantages[i, :valid].to(torch.float64))
    vector = torch.cat(items)
    action_mask = torch.ones_like(vector)
    total, count = vector.sum(), action_mask.sum()
    mean = total / count
    std = ((vector - mean).pow(2) * action_mask).sum()
    rstd = (std / count).clamp(min=1e-8).rsqrt()
    return [(x - mean) * rstd for x in items]


def batch(seed: int, B: int = 7, T: int = 11):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    seq = torch.randn(B, generator=g, dtype=torch.float64) + 0.3
    tok = (torch.randn(B, T, generator=g, dtype=torch.float64) + 0.2) * mask
    return seq, tok, mask


def test_sequence_advantages_are_weighted_by_their_tokens():
    seq, _, mask = batch(0)
    got = whiten_advantages(seq, mask)
    assert got.shape == seq.shape and got.dtype == seq.dtype
    want = openrlhf_normalize(seq, mask)
    for i, item in enumerate(want):  # each response's tokens share one value, the whitened one
        torch.testing.assert_close(item, torch.full_like(item, float(got[i])), rtol=0, atol=1e-12)
    # token-weighted, not per response: the per-response mean would give a different answer
    plain = (seq - seq.mean()) / seq.std(unbiased=False)
    assert not torch.allclose(got, plain, atol=1e-3)
    # the whitened values have token-weighted mean 0 and variance 1
    w = mask.sum(1).double()
    assert float((got * w).sum() / w.sum()) == pytest.approx(0, abs=1e-12)
    assert float((got ** 2 * w).sum() / w.sum()) == pytest.approx(1, abs=1e-12)


def test_token_advantages_match_openrlhf():
    _, tok, mask = batch(1)
    got = whiten_advantages(tok, mask)
    assert got.shape == tok.shape and torch.all(got[~mask] == 0)
    for i, item in enumerate(openrlhf_normalize(tok, mask)):
        torch.testing.assert_close(got[i, :item.numel()], item, rtol=0, atol=1e-12)
    # float32 in, float32 out
    got32 = whiten_advantages(tok.float(), mask)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got, rtol=0, atol=1e-5)


def test_equal_advantages_whiten_to_zero():
    mask = torch.ones(3, 4, dtype=torch.bool)
    assert whiten_advantages(torch.full((3,), 0.7), mask).tolist() == [0.0, 0.0, 0.0]


def test_two_ranks_normalise_over_the_whole_batch():
    """Each rank holds half of the responses; the sums go through all_sum (an all-reduce, here two
    threads meeting at a barrier): both halves get what one process gets from the whole batch."""
    for seq_or_tok in (0, 1):
        seq, tok, mask = batch(2, B=8)
        adv = (seq, tok)[seq_or_tok]
        whole = whiten_advantages(adv, mask)
        parts = [(adv[:3], mask[:3]), (adv[3:], mask[3:])]
        slots, results = [None, None], [None, None]
        barrier = threading.Barrier(2)

        def all_sum_for(rank):
            def all_sum(t):
                slots[rank] = t.clone()
                barrier.wait()
                total = slots[0] + slots[1]
                barrier.wait()
                return total
            return all_sum

        def work(rank):
            results[rank] = whiten_advantages(*parts[rank], all_sum_for(rank))

        threads = [threading.Thread(target=work, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        torch.testing.assert_close(torch.cat(results), whole, rtol=0, atol=1e-12)


def test_a_run_whitens_what_the_loss_gets(tmp_path):
    cfg = small_config(tmp_path, objective="rloo", steps=1, minibatches=1, whiten_advantages=True,
                       prompts_per_step=4, max_new_tokens=40)
    advantages, losses = Spy("group_advantages"), Spy("linear_ppo_loss")
    run(cfg, spying(advantages, losses))
    (args, _, _), = losses.calls
    token_adv, mask = args[4], args[5]
    assert token_adv.dim() == 1  # no KL in the reward: per-response values, whitened over their tokens
    response_tokens = mask.sum(1).double()
    assert float((token_adv.double() * response_tokens).sum()) == pytest.approx(0, abs=1e-3)
    if float(advantages.calls[0][2].abs().sum()) > 0:
        assert float((token_adv.double() ** 2 * response_tokens).sum() / response_tokens.sum()) == \
            pytest.approx(1, abs=1e-4)

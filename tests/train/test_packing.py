"""Length-sorted pieces of a training micro-batch (ia_train.loop.packing): the loss and every gradient
equal the unpacked micro-batch's; the cut follows the lengths."""

import copy

import pytest
import torch

from ia_train.config import Config
from ia_train.loop.packing import pieces
from ia_train.loop.update import micro_batch_backward
from ia_train.models import Policy, load_model
from ia_train.rollout.builtin import BuiltinEngine


def test_pieces_sort_and_cover():
    prompt = torch.full((10,), 5)
    response = torch.tensor([3, 50, 4, 52, 5, 49, 3, 51, 4, 50])
    rows = torch.arange(10)
    parts = pieces(prompt, response, rows, overhead=20)
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert len(parts) == 2 and set(parts[0].tolist()) == {0, 2, 4, 6, 8}
    assert len(pieces(prompt, response, rows, overhead=10**6)) == 1  # cutting does not pay


@pytest.mark.parametrize("objective", ["passk", "dr_grpo"])
def test_packed_loss_and_gradients_equal_unpacked(objective):
    lm, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    torch.manual_seed(0)
    ro = BuiltinEngine(lm, tok).generate(["5 - 4 - 7 =", "1 + 2 =", "3 + 3 + 9 =", "8 - 1 ="], 16,
                                         temperature=1.0, max_new_tokens=48)
    adv = torch.randn(64)
    old = ro.logprobs + 0.01 * torch.randn_like(ro.logprobs)
    rows = torch.arange(64)
    assert len(pieces(ro.attention_mask[:, :ro.prompt_width].sum(1), ro.lengths, rows)) > 1
    out = []
    # one padded forward; length-sorted pieces; one varlen-packed sequence (the flash-attention path's
    # layout, run here through SDPA's block-diagonal mask)
    for pack, packing in ((False, "pieces"), (True, "pieces"), (True, "varlen")):
        model = Policy(copy.deepcopy(lm)).train()
        loss, metrics = micro_batch_backward(model, ro, rows, old, None, adv, Config(objective=objective,
                                             packing=packing), torch.device("cpu"), scale=0.5, pack=pack)
        out.append((loss, metrics, {n: p.grad for n, p in model.named_parameters()}))
    l0, m0, g0 = out[0]
    for l1, m1, g1 in out[1:]:
        assert l1 == pytest.approx(l0, rel=1e-5)
        for name in g0:
            torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4)
        assert m1["approx_kl"] == pytest.approx(m0["approx_kl"], rel=1e-4)
        assert m1["entropy_mean"] == pytest.approx(m0["entropy_mean"], rel=1e-5)

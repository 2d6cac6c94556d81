"""--gradient-checkpointing: the training forward keeps the decoder layers' inputs only (their
activations are recomputed in the backward pass), the loss and every gradient equal the run without
it, sampling and the no-grad passes are untouched, and a model that cannot be checkpointed is refused
with one line."""

import copy

import pytest
import torch

from ia_train.config import Config
from ia_train.errors import ConfigError
from ia_train.loop.forward import sequence_logprobs
from ia_train.loop.hooks import Kernels
from ia_train.loop.update import micro_batch_backward
from ia_train.models import Policy, checkpoint_activations, load_model
from ia_train.rollout.builtin import BuiltinEngine


class SavedForBackward:
    """The elements autograd saves for the backward pass while the block runs (what activation
    checkpointing cuts); `torch.autograd.graph.saved_tensors_hooks` sees every one."""

    def __init__(self):
        self.elements = 0

    def __enter__(self):
        def pack(t):
            self.elements += t.numel()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("pack", [False, True])
def test_checkpointed_layers_keep_less_and_give_the_same_gradients(pack):
    lm, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    torch.manual_seed(0)
    ro = BuiltinEngine(lm, tok).generate(["5 - 4 - 7 =", "1 + 2 =", "3 + 3 + 9 ="], 8, temperature=1.0,
                                         max_new_tokens=48)
    adv, rows = torch.randn(24), torch.arange(24)
    old = ro.logprobs + 0.01 * torch.randn_like(ro.logprobs)
    out = {}
    for checkpointing in (False, True):
        copied = copy.deepcopy(lm)
        if checkpointing:
            checkpoint_activations(copied)
        model = Policy(copied).train()
        with SavedForBackward() as saved:
            loss, metrics = micro_batch_backward(model, ro, rows, old, None, adv, Config(objective="passk"),
                                                 torch.device("cpu"), pack=pack)
        out[checkpointing] = loss, metrics, {n: p.grad.clone() for n, p in model.named_parameters()}, saved.elements
    (l0, m0, g0, s0), (l1, m1, g1, s1) = out[False], out[True]
    # 4 layers: what stays for backward is a small part of the activations (the recompute's own,
    # freed layer by layer, counted too)
    assert s1 < 0.6 * s0, (s0, s1)
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert m1["entropy_mean"] == pytest.approx(m0["entropy_mean"], rel=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-7, rtol=1e-5)


def test_sampling_and_no_grad_passes_are_untouched():
    lm, tok = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    torch.manual_seed(0)
    ro = BuiltinEngine(lm, tok).generate(["1 + 2 =", "5 - 4 - 7 ="], 4, temperature=1.0, max_new_tokens=16)
    plain = sequence_logprobs(Policy(lm).eval(), ro, Config(), torch.device("cpu"), micro=8, kernels=Kernels())
    checkpoint_activations(lm)
    model = Policy(lm).train()
    torch.manual_seed(0)
    again = BuiltinEngine(model, tok).generate(["1 + 2 =", "5 - 4 - 7 ="], 4, temperature=1.0, max_new_tokens=16)
    assert again.texts == ro.texts
    torch.testing.assert_close(again.logprobs, ro.logprobs, rtol=0, atol=0)
    torch.testing.assert_close(sequence_logprobs(model, ro, Config(), torch.device("cpu"), micro=8, kernels=Kernels()),
                               plain, rtol=0, atol=0)


def test_a_model_without_checkpointing_is_refused():
    lm, _ = load_model("tiny", device=torch.device("cpu"), attention="sdpa")
    lm.supports_gradient_checkpointing = False
    with pytest.raises(ConfigError, match="--gradient-checkpointing: LlamaForCausalLM does not support activation "
                                          "checkpointing; drop the flag"):
        checkpoint_activations(lm)


def test_a_run_with_checkpointing_trains_and_records_the_setting(tmp_path):
    from ia_train.cli import main

    out = tmp_path / "run"
    assert main(["--out", str(out), "--steps", "2", "--prompts-per-step", "2", "--n", "4", "--max-new-tokens", "24",
                 "--eval-problems", "0", "--gradient-checkpointing", "true", "--tensorboard", "false"]) == 0
    import json

    assert json.loads((out / "config.json").read_text())["gradient_checkpointing"] is True
    # it does not change what is trained, so a resumed run may turn it off
    assert main(["--out", str(out), "--steps", "3", "--resume", "--gradient-checkpointing", "false"]) == 0

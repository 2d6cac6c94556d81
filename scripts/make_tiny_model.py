"""Build the bundled tiny model (python/ia_train/assets/tiny/) from scratch, reproducibly.

A character-level tokenizer (printable ASCII + newline, built with `tokenizers`) and a small Llama,
warm-started by supervised training on two worked solutions of each of reasoning-gym's chain_sum
problems, a concise one (the whole sum in one line) and a verbose one (a preamble, then step by step):
    prompt "5 - 4 - 7 =\n"  ->  "5 - 4 - 7 = -6\n<answer>-6</answer>" + EOS                      (35 tokens)
                            or  "Work left to right.\n5 - 4 = 1\n1 - 7 = -6\n<answer>-6</answer>" + EOS  (61)
The model therefore samples both lengths of an answer, about half of each. On two-term problems the
concise one is right as often (the preamble adds only tokens); on three-term ones the step-by-step
one is right about twice as often. That is what a length penalty (Arora & Zanette) works with:
shorter correct answers to find, at a cost in accuracy where the steps help. The warm start is
deliberately short (600 steps of 32 problems x 2 solutions, AdamW at a constant 2e-3 after 15
warm-up steps), so the model is right often but not reliably when sampled at temperature 1: on 200
held-out problems (8 samples each) pass@1 0.38, pass@4 0.67, 44 mean tokens. That is the room RL
fine-tuning (`ia-train`) then works in. 0.88 M parameters (4 layers, width 128), 3.5 MB of
safetensors.

The SFT problems come from the task's train split with seed SFT_SEED (far from the seeds ia-train
uses for training and evaluation). Deterministic on CPU with one thread (the default: a rerun
reproduces the committed safetensors bit for bit); about 4 minutes on one core:
    python scripts/make_tiny_model.py            # writes python/ia_train/assets/tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SFT_SEED = 500_000_000
MAX_NEW_TOKENS = 80  # ia-train's default limit: the longest verbose solution is 65 tokens with EOS
VERBOSE_PREAMBLE = "Work left to right."
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "python" / "ia_train" / "assets" / "tiny"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '\\n' }}{% endif %}")


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    # A BPE model without merges is a character-level tokenizer that still saves as tokenizer.json.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads prompts on the left
    return fast


def steps_of(expression: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """[(accumulator, op, term, new accumulator)] left to right, and the result."""
    parts = expression.split()
    acc = int(parts[0])
    steps = []
    for op, num in zip(parts[1::2], parts[2::2]):
        new = acc + int(num) if op == "+" else acc - int(num)
        steps.append((acc, op, int(num), new))
        acc = new
    return steps, acc


def concise_solution(expression: str) -> str:
    """The whole expression in one line, then the answer tag: short, but the model must add all the
    terms at once, which it does less reliably than step by step when there are three."""
    _steps, result = steps_of(expression)
    return f"{expression} = {result}\n<answer>{result}</answer>"


def verbose_solution(expression: str) -> str:
    """A fixed preamble, then left-to-right partial sums, one line per operation, then the answer
    tag: longer (the preamble is pure verbosity), and on three terms more often right."""
    steps, result = steps_of(expression)
    return (f"{VERBOSE_PREAMBLE}\n" + "\n".join(f"{a} {op} {b} = {c}" for a, op, b, c in steps)
            + f"\n<answer>{result}</answer>")


def build_model(vocab_size: int, args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=256, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(config)


def sft_batches(tokenizer, task, args):
    """Each batch holds args.batch // 2 problems, each twice: once with its concise and once with
    its verbose solution, so that style is independent of the problem and both lengths of a correct
    answer exist in the model's samples."""
    from ia_train.models import format_prompt

    per_batch = args.batch // 2
    problems = task.problems("train", args.steps * per_batch, SFT_SEED)
    for step in range(args.steps):
        ids, labels = [], []
        for p in problems[step * per_batch:(step + 1) * per_batch]:
            prompt = tokenizer(format_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
            expression = p.meta["entry"]["metadata"]["expression"]
            for solution in (concise_solution(expression), verbose_solution(expression)):
                answer = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids.append(prompt + answer)
                labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
        yield input_ids, label_ids, (input_ids != tokenizer.pad_token_id).long()


def evaluate(model, tokenizer, task, count: int, n: int, seed: int) -> dict:
    from ia_train.evaluation.metrics import summarize
    from ia_train.models import format_prompt
    from ia_train.rollout.hf import sample

    problems = task.problems("eval", count, seed)
    torch.manual_seed(seed)
    ro = sample(model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in problems], n,
                temperature=1.0, max_new_tokens=MAX_NEW_TOKENS)
    rows = [problems[i // n] for i in range(len(ro.texts))]
    correct = [task.score(p, t) > 0.5 for p, t in zip(rows, ro.texts)]
    answers = [task.extract_answer(p, t) for p, t in zip(rows, ro.texts)]
    group = lambda xs: [xs[i:i + n] for i in range(0, len(xs), n)]  # noqa: E731
    return summarize(group(correct), group(answers), group(ro.lengths.tolist()), k=min(4, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step: batch / 2 problems, two solutions each")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest for this size, and on a busy machine")
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--probe-every", type=int, default=0, help="quick held-out check every this many steps")
    ap.add_argument("--task-options", type=json.loads,
                    default=None, help="chain_sum settings (JSON); default: ia-train's defaults for chain_sum")
    args = ap.parse_args()

    from ia_train.tasks import load_task

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    task = load_task("chain_sum", args.task_options)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), args)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 15
    # Warm-up then a constant rate: the model after N steps is the same whatever --steps says, so a
    # long run's --probe-every reports show what a shorter run would give.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    t0 = time.time()
    for step, (ids, labels, mask) in enumerate(sft_batches(tokenizer, task, args)):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s", flush=True)
        if args.probe_every and (step + 1) % args.probe_every == 0 and step + 1 < args.steps:
            model.eval()
            probe = evaluate(model, tokenizer, task, 64, 4, seed=7)
            print(f"  after {step + 1} steps: pass@1 {probe['pass@1']:.3f}  pass@4 {probe['pass@k']:.3f}", flush=True)
            model.train()
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    if args.eval_problems:
        summary = evaluate(model, tokenizer, task, args.eval_problems, 8, seed=7)
        print(json.dumps({k: round(summary[k], 4) for k in ("pass@1", "pass@k", "maj@k", "mean_tokens")}))
    size = (args.out / "model.safetensors").stat().st_size
    print(f"wrote {args.out} (model.safetensors {size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()

"""Build the bundled tiny model (python/ia_train/assets/tiny/) from scratch, reproducibly.

A character-level tokenizer (printable ASCII + newline, built with `tokenizers`) and a small Llama,
warm-started by supervised training on ia_train's bundled task, chain_styles
(python/ia_train/tasks/chain_styles.py): one-digit chain sums of 2-5 terms in five classes (t2, t3,
t4, t5, and pick, tagged `Q: `), each problem with both of its worked solutions, so the model
samples the two styles about half and half on every class:
    prompt "5 - 4 - 7 =\\n"  ->  "5-4=1 1-7=-6\\n<answer>-6</answer>" + EOS                              (brief)
                            or  "Work left to right.\\n5 - 4 = 1\\n1 - 7 = -6\\nSo the answer is -6.\\n"
                                "<answer>-6</answer>" + EOS                                         (explained)
Both styles compute left to right one one-digit step at a time, and the warm start is long enough
that both are right nearly always: what RL fine-tuning (`ia-train`) then works with is the task's
hidden rubric (which style counts on which problem), not arithmetic. The check at the end
(`--check-only` runs it alone on the committed model) prints, per class and per style, how often the
model picks the style, its accuracy with the rubric ignored, its score with the rubric, its mean
tokens, and per class pass@1 and pass@4.

The SFT problems come from the task's train split with seed SFT_SEED (far from the seeds ia-train
uses). AdamW, a linear warm-up, a constant rate, then a linear decay to 0 over the last
DECAY_FRACTION of the steps. Deterministic on CPU with one thread (the default): a rerun reproduces
the committed safetensors bit for bit. It runs in pieces if needed: `--state FILE` saves the whole
training state (weights, optimiser, schedule, step) there after every `--save-every` steps and when
stopped by `--stop-after-minutes`, and continues from it when the file exists; the pieces give the
same bits as one uninterrupted run.
    python scripts/make_tiny_model.py                                   # writes python/ia_train/assets/tiny
    python scripts/make_tiny_model.py --state /tmp/sft.pt --stop-after-minutes 4   # repeat until done
    python scripts/make_tiny_model.py --check-only                      # the check, on the committed model
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

SFT_SEED = 500_000_000
CHECK_SEED = 7
DECAY_FRACTION = 0.2
WARMUP = 15
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


def build_model(vocab_size: int, args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=256, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(config)


def sft_batch(tokenizer, problems, step: int, per_batch: int, pieces: int = 1):
    """Step `step`'s batch: per_batch problems, each twice, with its brief and its explained solution
    (so that style is independent of the problem and of its class), as `pieces` (input ids, labels,
    attention mask) of similar lengths (sorted by length, each padded to its own longest: the
    sequences run from 30 to 128 tokens, so one padded block would be half padding)."""
    from ia_train.models import format_prompt
    from ia_train.tasks.chain_styles import brief_solution, explained_solution

    ids, labels = [], []
    for p in problems[step * per_batch:(step + 1) * per_batch]:
        prompt = tokenizer(format_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
        terms, ops = p.meta["terms"], p.meta["ops"]
        for solution in (brief_solution(terms, ops), explained_solution(terms, ops)):
            answer = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    size = -(-len(order) // pieces)
    out = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.tensor([ids[i] + [tokenizer.pad_token_id] * (width - len(ids[i])) for i in rows])
        label_ids = torch.tensor([labels[i] + [-100] * (width - len(labels[i])) for i in rows])
        out.append((input_ids, label_ids, (input_ids != tokenizer.pad_token_id).long()))
    return out


def batch_loss_backward(model, pieces) -> float:
    """The batch's mean token cross-entropy (over every piece's response tokens), its gradient
    accumulated piece by piece; returns the loss."""
    tokens = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in pieces)
    total = 0.0
    for ids, labels, mask in pieces:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100, reduction="sum") / tokens
        loss.backward()
        total += loss.item()
    return total


def lr_factor(step: int, steps: int) -> float:
    """Warm-up, constant, then a linear decay to 0 over the last DECAY_FRACTION of the steps."""
    decay_from = int(steps * (1 - DECAY_FRACTION))
    if step < WARMUP:
        return (step + 1) / WARMUP
    if step < decay_from:
        return 1.0
    return max(0.0, (steps - step) / max(1, steps - decay_from))


@torch.no_grad()
def check(model, tokenizer, count: int, n: int, seed: int = CHECK_SEED, max_new_tokens: int = 128) -> dict:
    """The base model's properties on `count` held-out problems x n samples: per class and style,
    how often the style is picked, its accuracy (rubric ignored), its score (rubric applied) and its
    mean tokens; per class pass@1 / pass@4 (rubric applied) and the share of unrecognised responses."""
    import ia_kernels

    from ia_train.models import format_prompt
    from ia_train.rollout import make_engine
    from ia_train.tasks.chain_styles import CLASSES, ChainStylesTask, style_of

    task = ChainStylesTask()
    problems = task.problems("eval", count, seed)
    torch.manual_seed(seed)
    engine = make_engine("builtin", model, tokenizer)
    ro = engine.generate([format_prompt(tokenizer, p.prompt) for p in problems], n, temperature=1.0,
                         max_new_tokens=max_new_tokens, batch_size=512)
    rows: dict = {c: {"samples": 0, "unrecognised": 0, "correct": [], **{s: {"n": 0, "right": 0, "score": 0,
                                                                              "tokens": 0} for s in ("brief", "explain")}}
                  for c in CLASSES}
    for i, text in enumerate(ro.texts):
        p = problems[i // n]
        r = rows[p.meta["class"]]
        r["samples"] += 1
        style, answer = style_of(text)
        score = task.score(p, text)
        r["correct"].append(score >= 0.5)
        if style is None:
            r["unrecognised"] += 1
            continue
        s = r[style]
        s["n"] += 1
        s["right"] += int(answer == p.answer)
        s["score"] += score
        s["tokens"] += int(ro.lengths[i])
    out = {}
    for c, r in rows.items():
        if not r["samples"]:
            continue
        correct = torch.tensor(r["correct"])
        entry = {"problems": r["samples"] // n, "unrecognised": r["unrecognised"] / r["samples"],
                 "pass@1": float(ia_kernels.group_pass_at_k(correct, n, 1).mean()),
                 "pass@4": float(ia_kernels.group_pass_at_k(correct, n, min(4, n)).mean())}
        for style in ("brief", "explain"):
            s = r[style]
            entry[style] = {"share": s["n"] / r["samples"], "accuracy": s["right"] / max(1, s["n"]),
                            "score": s["score"] / max(1, s["n"]), "mean_tokens": s["tokens"] / max(1, s["n"])}
        out[c] = entry
    return out


def print_check(result: dict) -> None:
    print(f"{'class':<6} {'style':<8} {'share':>6} {'accuracy':>9} {'score':>6} {'tokens':>7}   "
          f"{'pass@1':>6} {'pass@4':>6} {'unrecognised':>12}")
    for c, e in result.items():
        for i, style in enumerate(("brief", "explain")):
            s = e[style]
            tail = f"   {e['pass@1']:6.3f} {e['pass@4']:6.3f} {e['unrecognised']:12.3f}" if i == 0 else ""
            print(f"{c:<6} {style:<8} {s['share']:6.3f} {s['accuracy']:9.3f} {s['score']:6.3f} {s['mean_tokens']:7.1f}"
                  + tail)


def train(args, tokenizer) -> torch.nn.Module | None:
    """The SFT run (continued from --state when it exists); None when --stop-after-minutes stopped it."""
    from ia_train.tasks.chain_styles import ChainStylesTask

    torch.manual_seed(args.seed)
    model = build_model(len(tokenizer), args)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.steps))
    per_batch = args.batch // 2
    problems = ChainStylesTask().problems("train", args.steps * per_batch, SFT_SEED)
    start = 0
    settings = {k: getattr(args, k) for k in ("steps", "batch", "pieces", "lr", "hidden", "layers", "heads", "seed")}
    if args.state is not None and args.state.exists():
        state = torch.load(args.state, weights_only=False)
        if state["settings"] != settings:
            raise SystemExit(f"--state {args.state} was written with other settings ({state['settings']}); "
                             "delete it or give the same settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        print(f"continuing from step {start} of {args.steps} ({args.state})")

    def save_state(step: int) -> None:
        tmp = args.state.with_suffix(".tmp")
        torch.save({"settings": settings, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict()}, tmp)
        os.replace(tmp, args.state)

    model.train()
    t0 = time.time()
    for step in range(start, args.steps):
        opt.zero_grad(set_to_none=True)
        loss = batch_loss_backward(model, sft_batch(tokenizer, problems, step, per_batch, args.pieces))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if step % 50 == 0 or done == args.steps:
            print(f"step {step:5d}  loss {loss:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:6.1f}s",
                  flush=True)
        if args.probe_every and done % args.probe_every == 0 and done < args.steps:
            model.eval()
            probe = check(model, tokenizer, 50, 4)
            print("  after", done, "steps:", {c: round(e["pass@1"], 3) for c, e in probe.items()}, flush=True)
            model.train()
        if args.state is not None and done < args.steps:
            out_of_time = ((args.stop_after_minutes and time.time() - t0 > 60 * args.stop_after_minutes)
                           or done == args.stop_at_step)
            if out_of_time or (args.save_every and done % args.save_every == 0):
                save_state(done)
            if out_of_time:
                print(f"stopped after step {done} of {args.steps}; run the same command again to continue")
                return None
    model.eval()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step: batch / 2 problems, two solutions each")
    ap.add_argument("--pieces", type=int, default=4, help="length-sorted pieces each batch runs in (less padding)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest for this size, and on a busy machine")
    ap.add_argument("--check-problems", type=int, default=100, help="held-out problems of the final check (0: none)")
    ap.add_argument("--check-n", type=int, default=8, help="samples per problem in the final check")
    ap.add_argument("--check-only", action="store_true", help="only run the check, on the model in --out")
    ap.add_argument("--probe-every", type=int, default=0, help="a quick held-out check every this many steps")
    ap.add_argument("--state", type=Path, default=None, help="training state file: saved, and continued from")
    ap.add_argument("--save-every", type=int, default=200, help="with --state: save every this many steps")
    ap.add_argument("--stop-after-minutes", type=float, default=0.0,
                    help="with --state: save and stop after this many minutes (0: run to the end)")
    ap.add_argument("--stop-at-step", type=int, default=0, help="with --state: save and stop after this step "
                                                                   "(checks that pieces give the same bits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.check_only:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.out, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.out, local_files_only=True, dtype=torch.float32).eval()
    else:
        tokenizer = build_tokenizer()
        model = train(args, tokenizer)
        if model is None:
            return
        args.out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(args.out, safe_serialization=True)
        tokenizer.save_pretrained(args.out)
        size = (args.out / "model.safetensors").stat().st_size
        print(f"wrote {args.out} (model.safetensors {size / 1e6:.2f} MB) in {time.time() - t0:.0f}s", flush=True)
    if args.check_problems:
        result = check(model, tokenizer, args.check_problems, args.check_n)
        print_check(result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()

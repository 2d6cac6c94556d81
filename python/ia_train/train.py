"""The training loop, top to bottom: evaluate, then for each step sample -> score -> advantages ->
PPO epochs on the fused linear PPO loss -> log -> checkpoint; evaluate again; write the summary.

Determinism: every step reseeds torch from (seed, step) before sampling and shuffling, so a step's
rollouts depend only on the weights and the step number; with the optimiser state restored from a
checkpoint, a resumed run repeats the uninterrupted one exactly (same device and thread count).
"""

from __future__ import annotations

import copy
import platform
import random
import sys
import time
from pathlib import Path

import ia_kernels
import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint, plots
from .attention import CALLS as ATTENTION_CALLS
from .attention import choose_attention
from .config import Config, ConfigError, resume_changes
from .evaluation import METRICS, answer_ids, change, summarize
from .files import RunFileError, read_json, write_json, writing
from .logger import MetricsLog
from .models import body_and_head, format_prompt, load_model
from .rollout import Rollout, sample
from .tasks import load_task

USES_K = ("passk", "passk_chen", "majority")  # the estimators whose objective involves k samples


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite; the message is one line naming the step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % 2**63


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)  # "cuda" without a device is refused by config.validate


# ------------------------------------------------------------------------------------------------
# evaluation on held-out problems


def split_problems(task, cfg: Config) -> tuple[list, list]:
    """(training problems, held-out problems). The held-out set is the task's eval split as drawn;
    training problems whose prompt is in it are skipped (small generated problem spaces repeat
    problems across seeds), so training never sees a held-out prompt and the held-out set stays
    an unbiased sample of the task."""
    from .tasks.reasoning_gym import ReasoningGymTask

    held = list(task.problems("eval", cfg.eval_problems, cfg.seed)) if cfg.eval_problems else []
    need = max(1, cfg.steps) * cfg.prompts_per_step
    pool = task.problems("train", 2 * need if isinstance(task, ReasoningGymTask) else need, cfg.seed)
    held_prompts = {p.prompt for p in held}
    train = [p for p in pool if p.prompt not in held_prompts][:need]
    if not train:
        raise ConfigError(f"every training problem of {cfg.task} is also a held-out problem; lower --eval-problems")
    return train, held


def evaluate(model, tokenizer, task, problems, cfg: Config, label: str) -> tuple[dict, list[dict]]:
    """n samples per held-out problem -> summary (pass@1, pass@k, maj@k, mean_tokens, with CIs)."""
    correct, answers, lengths, samples = sample_and_score(model, tokenizer, task, problems, cfg, label)
    return summarize(correct, answers, lengths, cfg.k, seed=cfg.seed), samples


def sample_and_score(model, tokenizer, task, problems, cfg: Config, label: str):
    """cfg.eval_n samples per problem -> per problem: correctness, final answers, response lengths
    (lists of n), and the samples themselves for inspection."""
    torch.manual_seed(step_seed(cfg.seed, -1))  # the same sampling noise before and after training
    n = cfg.eval_n
    per_chunk = max(1, cfg.eval_batch // n)
    correct, answers, lengths, samples = [], [], [], []
    for start in tqdm(range(0, len(problems), per_chunk), desc=f"eval {label}", unit="batch", leave=False):
        chunk = problems[start:start + per_chunk]
        ro = sample(model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in chunk], n,
                    temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch)
        rows = [chunk[i // n] for i in range(len(ro.texts))]
        scores = task.score_batch(rows, ro.texts)
        for j, p in enumerate(chunk):
            sl = slice(j * n, (j + 1) * n)
            correct.append([s >= 0.5 for s in scores[sl]])
            answers.append([task.extract_answer(p, t) for t in ro.texts[sl]])
            lengths.append(ro.lengths[sl].tolist())
            samples.append({"uid": p.uid, "prompt": p.prompt, "answer": str(p.answer),
                            "responses": ro.texts[sl], "scores": scores[sl]})
    return correct, answers, lengths, samples


# ------------------------------------------------------------------------------------------------
# the training step


def trim(ro: Rollout) -> tuple[Rollout, torch.Tensor]:
    """Drop columns that are padding in every row (left of the prompts, right of the responses)."""
    used = ro.attention_mask.any(0)
    first = int(used[:ro.prompt_width].long().argmax()) if used[:ro.prompt_width].any() else ro.prompt_width - 1
    first = min(first, ro.prompt_width - 1)  # keep the column whose hidden state predicts response token 0
    last = ro.prompt_width + int(ro.response_mask.any(0).nonzero().max()) + 1 if ro.response_mask.any() else ro.prompt_width + 1
    pos = ro.position_ids[:, first:last]
    return Rollout(ro.input_ids[:, first:last], ro.attention_mask[:, first:last], ro.prompt_width - first,
                   ro.response_mask[:, :last - ro.prompt_width], ro.texts, ro.lengths), pos


def response_hidden(body, ro: Rollout, device: torch.device) -> torch.Tensor:
    """Final hidden states at the positions that predict the response tokens: [B, T, H]."""
    ro, pos = trim(ro)
    ids, amask = ro.input_ids.to(device), ro.attention_mask.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h = body(input_ids=ids, attention_mask=amask, position_ids=pos.to(device), use_cache=False).last_hidden_state
    return h[:, ro.prompt_width - 1:-1], ro.targets.to(device), ro.response_mask.to(device)


@torch.no_grad()
def sequence_logprobs(model, ro: Rollout, cfg: Config, device, micro: int) -> torch.Tensor:
    """[B, T] log-probs of the sampled tokens (zero on padding), computed in micro-batches."""
    body, weight, bias = body_and_head(model)
    out = torch.zeros(ro.response_mask.shape, dtype=torch.float32)
    for start in range(0, ro.input_ids.shape[0], micro):
        rows = slice(start, start + micro)
        h, targets, mask = response_hidden(body, ro.select(rows), device)
        w = weight.to(h.dtype)
        t = torch.where(mask, targets, -100)
        lp = ia_kernels.linear_logprobs(h, w, t, bias=bias, temperature=cfg.temperature, backend=cfg.backend)
        out[rows, :lp.shape[1]] = lp.float().cpu()
    return out


def loss_options(cfg: Config) -> dict:
    opts = {"clip_low": cfg.clip, "clip_high": cfg.clip_high, "kl_coef": cfg.kl_coef}
    if cfg.objective == "dr_grpo":
        # Dr. GRPO: sum over each response's tokens divided by a constant, not by its own length.
        opts.update(aggregation="seq-mean-token-sum-norm", norm_length=cfg.max_new_tokens)
    return opts


def ppo_update(model, optimizer, scheduler, ro: Rollout, old_logp, ref_logp, advantages, cfg: Config,
               device, generator: torch.Generator) -> dict:
    body, weight, bias = body_and_head(model)
    B = ro.input_ids.shape[0]
    mb = B // cfg.minibatches
    micro = mb // cfg.grad_accum
    sums: dict[str, float] = {}
    count = 0
    grad_norms = []
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for m in range(cfg.minibatches):
            optimizer.zero_grad(set_to_none=True)
            for a in range(cfg.grad_accum):
                rows = order[m * mb + a * micro: m * mb + (a + 1) * micro]
                h, targets, mask = response_hidden(body, ro.select(rows), device)
                T = h.shape[1]
                loss, metrics = ia_kernels.linear_ppo_loss(
                    h, weight.to(h.dtype), targets, old_logp[rows, :T].to(device), advantages[rows].to(device),
                    mask, bias=bias, temperature=cfg.temperature, backend=cfg.backend,
                    ref_logp=None if ref_logp is None else ref_logp[rows, :T].to(device), **loss_options(cfg))
                (loss / cfg.grad_accum).backward()
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for key, value in metrics.items():
                    if torch.is_tensor(value) and value.numel() == 1:
                        sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
            if cfg.max_grad_norm > 0:
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)))
            optimizer.step()
    scheduler.step()
    out = {key: value / count for key, value in sums.items()}
    if grad_norms:
        out["grad_norm"] = float(np.mean(grad_norms))
    return out


# ------------------------------------------------------------------------------------------------
# the run


def print_table(summary: dict) -> str:
    k = summary["k"]
    lines = [f"held-out problems: {summary['before']['problems']}, n = {summary['n']} samples each, k = {k}; "
             f"95% bootstrap intervals over problems (paired for the change)",
             f"{'metric':<12} {'before':>22} {'after':>22} {'change':>26}"]
    for name in METRICS:
        fmt = "{:+.1f}" if name == "mean_tokens" else "{:+.3f}"
        cell = lambda s: (f"{fmt.format(s[name])} [{fmt.format(s[name + '_ci'][0])}, "  # noqa: E731
                          f"{fmt.format(s[name + '_ci'][1])}]").replace("+", "")
        delta = summary["change"]
        d = f"{fmt.format(delta[name])} [{fmt.format(delta[name + '_ci'][0])}, {fmt.format(delta[name + '_ci'][1])}]"
        label = name.replace("@k", f"@{k}")
        lines.append(f"{label:<12} {cell(summary['before']):>22} {cell(summary['after']):>22} {d:>26}")
    return "\n".join(lines)


def run(cfg: Config) -> dict:
    """The whole experiment (see the module doc); returns the summary written to summary.json."""
    threads = torch.get_num_threads()
    if cfg.threads or cfg.model == "tiny":
        torch.set_num_threads(cfg.threads or 1)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep their setting


def _run(cfg: Config) -> dict:
    t_start = time.time()
    out = Path(cfg.out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    attention = choose_attention(cfg.attention, device)
    model, tokenizer = load_model(cfg.model, device=device, attention=attention)
    model.train()
    ref_model = None
    if cfg.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    task = load_task(cfg.task, cfg.task_options)
    per_step = cfg.prompts_per_step
    train_problems, eval_problems = split_problems(task, cfg)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    before_file = out / "eval_before.json"
    before = None
    start_step = 0
    if cfg.resume:
        saved = read_json(out / "config.json")  # validate() checked it is there and matches
        if eval_problems:
            try:
                before = read_json(before_file)
                if not isinstance(before, dict) or not all(m in before for m in (*METRICS, "per_problem")):
                    raise RunFileError(f"{before_file} does not hold an evaluation summary")
            except RunFileError as e:  # evaluate the initial model again, before the checkpoint loads
                print(f"ia-train: {e}; evaluating the initial model again", file=sys.stderr, flush=True)
                before, samples = evaluate(model, tokenizer, task, eval_problems, cfg, "before")
                write_json(before_file, before)
                write_json(out / "samples_before.json", samples[:50], indent=1)
        state = checkpoint.load(out / "checkpoints", model, optimizer, scheduler)
        start_step = state["step"]
        changes = resume_changes(saved, cfg)
        print(f"ia-train: resuming at step {start_step} from {state['checkpoint']}"
              + (f"; changed settings: {', '.join(changes)}" if changes else ""), flush=True)
    write_json(out / "config.json", cfg.to_dict())
    log = MetricsLog(out, resume_step=start_step if cfg.resume else None, tensorboard=cfg.tensorboard)
    info = {"device": str(device), "attention": attention, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}
    print(f"ia-train: model {cfg.model} ({info['parameters'] / 1e6:.2f} M parameters), task {cfg.task}, "
          f"objective {cfg.objective} (k={cfg.k}, n={cfg.n}, alpha={cfg.alpha}), device {device}, "
          f"attention {attention}", flush=True)

    if eval_problems:
        if before is None:
            before, samples = evaluate(model, tokenizer, task, eval_problems, cfg, "before")
            write_json(before_file, before)
            write_json(out / "samples_before.json", samples[:50], indent=1)
        print(f"before: pass@1 {before['pass@1']:.3f}  pass@{cfg.k} {before['pass@k']:.3f}  "
              f"maj@{cfg.k} {before['maj@k']:.3f}  mean tokens {before['mean_tokens']:.1f}", flush=True)

    micro = cfg.prompts_per_step * cfg.n // (cfg.minibatches * cfg.grad_accum)
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(range(start_step, last_step), desc="train", unit="step", initial=start_step, total=cfg.steps)
    t_train = time.time()
    row = {}
    for step in bar:
        # --- rollouts
        torch.manual_seed(step_seed(cfg.seed, step))
        generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        position = (step * per_step) % len(train_problems)
        problems = [train_problems[(position + i) % len(train_problems)] for i in range(per_step)]
        t0 = time.time()
        ro = sample(model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in problems], cfg.n,
                    temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                    batch_size=max(cfg.eval_batch, per_step * cfg.n))
        t_sample = time.time() - t0
        # --- rewards and advantages
        rows = [problems[i // cfg.n] for i in range(len(ro.texts))]
        scores = torch.tensor(task.score_batch(rows, ro.texts), dtype=torch.float32)
        correct = scores >= 0.5
        rewards = scores
        if cfg.alpha > 0:
            rewards = ia_kernels.length_penalized_rewards(correct, ro.lengths, cfg.n, alpha=cfg.alpha)
        answers = answer_ids([task.extract_answer(p, t) for p, t in zip(rows, ro.texts)]) \
            if cfg.objective == "majority" else None
        advantages = ia_kernels.group_advantages(
            rewards.to(device), cfg.n, estimator=cfg.objective, k=cfg.k if cfg.objective in USES_K else None,
            answers=None if answers is None else answers.to(device)).float().cpu()
        # --- PPO
        t0 = time.time()
        old_logp = sequence_logprobs(model, ro, cfg, device, micro)
        ref_logp = sequence_logprobs(ref_model, ro, cfg, device, micro) if ref_model is not None else None
        stats = ppo_update(model, optimizer, scheduler, ro, old_logp, ref_logp, advantages, cfg, device, generator)
        t_update = time.time() - t0
        row = {"step": step + 1, "reward": float(rewards.mean()), "accuracy": float(correct.float().mean()),
               "mean_tokens": float(ro.lengths.float().mean()), "adv_abs": float(advantages.abs().mean()),
               "lr": scheduler.get_last_lr()[0], "time_sample": t_sample, "time_update": t_update, **stats}
        if not np.isfinite(stats.get("loss", 0.0)):
            raise TrainingDiverged(f"step {step + 1}: the loss is {stats['loss']}; the weights are no longer usable, "
                                   "so no checkpoint was written; lower --lr or resume from the last checkpoint")
        log.log(row)
        bar.set_postfix(acc=f"{row['accuracy']:.2f}", tok=f"{row['mean_tokens']:.0f}", kl=f"{stats.get('approx_kl', 0):.3f}")
        done = step + 1
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
            bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
            if bad is not None:
                raise TrainingDiverged(f"step {done}: {bad} holds non-finite values; no checkpoint was written "
                                       "(the last one is kept); lower --lr or --max-grad-norm")
            checkpoint.save(out / "checkpoints", done, model, optimizer, scheduler, {"data_position": done * per_step})
    bar.close()
    log.close()
    if cfg.stop_after is not None and cfg.stop_after < cfg.steps:
        print(f"stopped after step {last_step} (--stop-after); continue with --resume", flush=True)
        return {"stopped_at": last_step, "last": row}
    train_seconds = time.time() - t_train

    summary = {"k": cfg.k, "n": cfg.eval_n, "config": cfg.to_dict(), "info": info,
               "train_seconds": train_seconds}
    if eval_problems:
        after, samples = evaluate(model, tokenizer, task, eval_problems, cfg, "after")
        write_json(out / "samples_after.json", samples[:50], indent=1)
        summary.update(before=before, after=after, change=change(before, after, seed=cfg.seed))
    info["attention_calls"] = dict(ATTENTION_CALLS)
    summary["last_step"] = row
    summary["wall_seconds"] = time.time() - t_start
    from .logger import read_metrics

    with writing(out / "training_curves.png"):
        plots.training_curves(read_metrics(out), out / "training_curves.png",
                              title=f"{cfg.task} / {cfg.objective} (k={cfg.k}, n={cfg.n})")
    if eval_problems:
        with writing(out / "before_after.png"):
            plots.before_after(summary, out / "before_after.png")
        print(print_table(summary))
    write_json(out / "summary.json", summary)
    print(f"wrote {out}/summary.json, metrics.jsonl, training_curves.png"
          f"{', before_after.png' if eval_problems else ''} in {summary['wall_seconds']:.0f}s", flush=True)
    return summary

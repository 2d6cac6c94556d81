"""The training loop, top to bottom: evaluate, then for each step sample -> score -> advantages ->
PPO epochs on the fused linear PPO loss -> log -> checkpoint; evaluate again; write the summary.

Determinism: every step reseeds torch from (seed, step) before sampling and shuffling, so a step's
rollouts depend only on the weights and the step number; with the optimiser state restored from a
checkpoint, a resumed run repeats the uninterrupted one exactly (same device and thread count).

Started by torchrun (or another launcher), every rank runs the same stages on its share of the
prompts and of the held-out problems, with the model sharded by FSDP2: see distributed.py.
"""

from __future__ import annotations

import copy
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import ia_kernels
import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint, distributed, packing, plots
from .attention import CALLS as ATTENTION_CALLS
from .attention import choose_attention
from .distributed import SINGLE, Dist, gathered
from .engine import make_engine
from .config import Config, resume_changes
from .errors import ConfigError
from .evaluation import METRICS, answer_ids, change, summarize
from .files import RunFileError, read_json, write_json, writing
from .logger import MetricsLog, read_metrics
from .models import Policy, format_prompt, load_model
from .rollout import Rollout
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
    held = list(task.problems("eval", cfg.eval_problems, cfg.seed)) if cfg.eval_problems else []
    need = max(1, cfg.steps) * cfg.prompts_per_step
    pool = task.problems("train", 2 * need if getattr(task, "repeats_problems", False) else need, cfg.seed)
    held_prompts = {p.prompt for p in held}
    train = [p for p in pool if p.prompt not in held_prompts][:need]
    if not train:
        raise ConfigError(f"every training problem of {cfg.task} is also a held-out problem; lower --eval-problems")
    return train, held


def evaluate(model, tokenizer, task, problems, cfg: Config, label: str, d: Dist = SINGLE) -> tuple[dict, list[dict]]:
    """n samples per held-out problem -> summary (pass@1, pass@k, maj@k, mean_tokens, with CIs).
    With several ranks each samples its block of the problems; the results are gathered in order."""
    with gathered(model):
        results = sample_and_score(model, tokenizer, task, distributed.my_block(problems, d), cfg, label, d)
    correct, answers, lengths, samples = (distributed.gather_lists(part, d) for part in results)
    return summarize(correct, answers, lengths, cfg.k, seed=cfg.seed), samples


def sample_and_score(model, tokenizer, task, problems, cfg: Config, label: str, d: Dist = SINGLE):
    """cfg.eval_n samples per problem -> per problem: correctness, final answers, response lengths
    (lists of n), and the samples themselves for inspection."""
    # the same sampling noise before and after training (each rank its own)
    torch.manual_seed(distributed.rank_seed(step_seed(cfg.seed, -1), d))
    n = cfg.eval_n
    per_chunk = max(1, cfg.eval_batch // n)
    correct, answers, lengths, samples = [], [], [], []
    for start in tqdm(range(0, len(problems), per_chunk), desc=f"eval {label}", unit="batch", leave=False,
                      disable=not d.main):
        chunk = problems[start:start + per_chunk]
        ro = make_engine(cfg.rollout, model, tokenizer).generate(
            [format_prompt(tokenizer, p.prompt) for p in chunk], n, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch)
        rows = [chunk[i // n] for i in range(len(ro.texts))]
        ended = finished(ro, tokenizer)
        scores = scored_rewards(task, rows, ro.texts, ended, cfg).tolist()
        answers_all = final_answers(task, rows, ro.texts, ended, cfg)
        for j, p in enumerate(chunk):
            sl = slice(j * n, (j + 1) * n)
            correct.append([s >= 0.5 for s in scores[sl]])
            answers.append(answers_all[sl])
            lengths.append(ro.lengths[sl].tolist())
            samples.append({"uid": p.uid, "prompt": p.prompt, "answer": str(p.answer),
                            "responses": ro.texts[sl], "scores": scores[sl]})
    return correct, answers, lengths, samples


def finished(ro: Rollout, tokenizer) -> torch.Tensor:
    """[B] bool: which responses ended with the end-of-sequence token (the others were cut off at
    --max-new-tokens)."""
    return ((ro.targets == tokenizer.eos_token_id) & ro.response_mask).any(1)


def scored_rewards(task, problems: list, texts: list[str], ended: torch.Tensor, cfg: Config) -> torch.Tensor:
    """[B] float: the task's score of each response, 0 for a cut-off one (ended False) under
    --truncated-reward zero."""
    scores = torch.tensor(task.score_batch(problems, texts), dtype=torch.float32)
    if cfg.truncated_reward == "zero":
        scores = torch.where(ended, scores, torch.zeros_like(scores))
    return scores


def final_answers(task, problems: list, texts: list[str], ended: torch.Tensor, cfg: Config) -> list:
    """Each response's final answer for majority votes; None (no answer) for a cut-off one under
    --truncated-reward zero: it gave no final answer, so it cannot win a vote."""
    counts = ended.tolist() if cfg.truncated_reward == "zero" else [True] * len(texts)
    return [task.extract_answer(p, t) if e else None for p, t, e in zip(problems, texts, counts)]


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


class ResponseBatch(NamedTuple):
    hidden: torch.Tensor  # [B, T, H] final hidden states at the positions that predict the response tokens
    targets: torch.Tensor  # [B, T] the response tokens
    mask: torch.Tensor  # [B, T] which of them are real (not padding)
    weight: torch.Tensor  # [V, H] the LM-head weight (gathered, under FSDP)
    bias: torch.Tensor | None


def response_hidden(policy: Policy, ro: Rollout, device: torch.device) -> ResponseBatch:
    """One forward of the policy's body on a rollout: what the loss needs, never the logits."""
    ro, pos = trim(ro)
    ids, amask = ro.input_ids.to(device), ro.attention_mask.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h, weight, bias = policy("hidden", input_ids=ids, attention_mask=amask, position_ids=pos.to(device),
                                 use_cache=False)
    return ResponseBatch(h[:, ro.prompt_width - 1:-1], ro.targets.to(device), ro.response_mask.to(device), weight, bias)


@torch.no_grad()
def sequence_logprobs(policy: Policy, ro: Rollout, cfg: Config, device, micro: int) -> torch.Tensor:
    """[B, T] log-probs of the sampled tokens (zero on padding), computed in micro-batches."""
    out = torch.zeros(ro.response_mask.shape, dtype=torch.float32)
    for start in range(0, ro.input_ids.shape[0], micro):
        rows = slice(start, start + micro)
        h, targets, mask, weight, bias = response_hidden(policy, ro.select(rows), device)
        w = weight.to(h.dtype)
        t = torch.where(mask, targets, -100)
        lp = ia_kernels.linear_logprobs(h, w, t, bias=bias, temperature=cfg.temperature, backend=cfg.backend)
        out[rows, :lp.shape[1]] = lp.float().cpu()
    return out


def old_logprobs(r: "Run", ro: Rollout, micro: int) -> torch.Tensor | None:
    """The PPO's old log-probs: None with one optimiser step per batch (on-policy: the loss pass
    computes them itself, ratio 1); else the sampler's own when the engine kept them (the weights
    that sampled are the ones before the update); else one no-grad pass over the batch."""
    cfg = r.cfg
    if cfg.ppo_epochs * cfg.minibatches == 1:
        return None
    if ro.logprobs is not None:
        return ro.logprobs
    with gathered(r.model):
        return sequence_logprobs(r.model, ro, cfg, r.device, micro)


def loss_options(cfg: Config) -> dict:
    opts = {"clip_low": cfg.clip, "clip_high": cfg.clip_high, "kl_coef": cfg.kl_coef}
    if cfg.objective == "dr_grpo":
        # Dr. GRPO: sum over each response's tokens divided by a constant, not by its own length.
        opts.update(aggregation="seq-mean-token-sum-norm", norm_length=cfg.max_new_tokens)
    elif cfg.aggregation is not None:
        opts["aggregation"] = cfg.aggregation
    return opts


def kl_reward_advantages(advantages: torch.Tensor, sample_logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] advantages -> [B, T] with the k1 KL penalty in the reward, as OpenRLHF (Arora & Zanette's
    trainer) shapes it for its REINFORCE-family estimators: the task reward (after the group
    baseline) sits on the last token, every token t carries -beta * (log pi - log pi_ref)(t), and
    each token's advantage is its return, the sum of the rewards from t to the end (gamma = 1):
        A[i, t] = A[i] - beta * sum_{t' >= t} k1[i, t'].
    sample_logp are the sampling policy's log-probs (zero on padding). Also returns each response's
    summed k1 (its KL estimate, for the log)."""
    k1 = (sample_logp - ref_logp) * mask
    to_go = k1.flip(1).cumsum(1).flip(1)
    return (advantages[:, None] - beta * to_go) * mask, k1.sum(1)


def local_counts(ro: Rollout, batches: list[torch.Tensor], cfg: Config) -> torch.Tensor:
    """Per micro-batch, the count the loss's aggregation divides by: valid tokens (token-mean) or
    sequences with a valid token (the seq-mean aggregations)."""
    token_mean = loss_options(cfg).get("aggregation", "token-mean") == "token-mean"
    mask = ro.response_mask
    return torch.tensor([float(mask[rows].sum() if token_mean else mask[rows].any(1).sum()) for rows in batches],
                        dtype=torch.float64)


def ppo_update(model, optimizer, scheduler, ro: Rollout, old_logp, ref_logp, advantages, cfg: Config,
               device, generator: torch.Generator, d: Dist = SINGLE) -> dict:
    """cfg.ppo_epochs passes over the rollout batch, each in cfg.minibatches optimiser steps of
    cfg.grad_accum micro-batches. With several ranks each passes over its own rows, and every
    micro-batch's loss is scaled so that the averaged gradient is the global batch's
    (distributed.global_scale); the logged numbers are means over ranks."""
    B = ro.input_ids.shape[0]
    mb = B // cfg.minibatches
    micro = mb // cfg.grad_accum
    sums: dict[str, float] = {}
    count = 0
    grad_norms = []
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        batches = [order[m * mb + a * micro: m * mb + (a + 1) * micro]
                   for m in range(cfg.minibatches) for a in range(cfg.grad_accum)]
        if d.enabled:
            counts = local_counts(ro, batches, cfg)
            scales = distributed.global_scale(counts, distributed.all_sum(counts, d), d).tolist()
        for m in range(cfg.minibatches):
            optimizer.zero_grad(set_to_none=True)
            for a in range(cfg.grad_accum):
                rows = batches[m * cfg.grad_accum + a]
                scale = scales[m * cfg.grad_accum + a] if d.enabled else 1.0
                # in length-sorted pieces (packing.py): compute scales with the real tokens. Under a
                # launcher one piece, as every rank must run the same number of backward passes.
                loss, metrics = packing.micro_batch_backward(model, ro, rows, old_logp, ref_logp, advantages, cfg,
                                                             device, scale / cfg.grad_accum, pack=not d.enabled)
                sums["loss"] = sums.get("loss", 0.0) + loss * scale
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
            if cfg.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                grad_norms.append(distributed.grad_norm_value(norm))
            optimizer.step()
    scheduler.step()
    out = {key: value / count for key, value in sums.items()}
    if grad_norms:
        out["grad_norm"] = float(np.mean(grad_norms))
    return distributed.mean_over_ranks(out, d)


# ------------------------------------------------------------------------------------------------
# the run, in stages: setup -> resume -> start the log -> evaluate before -> train -> finish


def summary_table(summary: dict) -> str:
    """The before / after / change table of a summary, as text."""
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


@dataclass
class Run:
    """Everything the stages of a run share."""

    cfg: Config
    d: Dist  # rank and world size (distributed.py); SINGLE without a launcher
    out: Path
    device: torch.device
    attention: str
    model: Policy  # the causal LM behind Policy's one forward; FSDP-sharded under a launcher
    tokenizer: object
    ref_model: Policy | None  # frozen, never sharded
    task: object
    train_problems: list
    eval_problems: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    t_start: float
    start_step: int = 0
    before: dict | None = None  # the evaluation of the initial model
    info: dict = field(default_factory=dict)

    def say(self, line: str, err: bool = False) -> None:
        """Prints on rank 0 only."""
        if self.d.main:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)


def run(cfg: Config) -> dict:
    """The whole experiment (see the module doc); returns the summary written to summary.json."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = SINGLE
    try:
        d, device = distributed.init(cfg.device)
        return _run(cfg, d, device)
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep their setting
        distributed.shutdown(d)


def _run(cfg: Config, d: Dist, device: torch.device) -> dict:
    r = setup(cfg, d, device)
    resume(r)
    log = start_log(r)
    evaluate_before(r)
    row, train_seconds = train(r, log)
    if cfg.stop_after is not None and cfg.stop_after < cfg.steps:
        r.say(f"stopped after step {cfg.stop_after} (--stop-after); continue with --resume")
        return {"stopped_at": cfg.stop_after, "last": row}
    return finish(r, row, train_seconds)


def setup(cfg: Config, d: Dist = SINGLE, device: torch.device | None = None) -> Run:
    """The output directory, the model (and the frozen reference model for the KL penalty), the task
    and its training / held-out problems, the optimiser and the learning-rate schedule. Under a
    launcher every rank loads the same model and shards it (FSDP2) before the optimiser is made."""
    t_start = time.time()
    out = Path(cfg.out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device) if device is None else device
    seed_everything(cfg.seed)
    attention = choose_attention(cfg.attention, device)
    lm, tokenizer = load_model(cfg.model, device=device, attention=attention)
    model = Policy(lm).train()
    needs_ref = cfg.kl_coef > 0 or cfg.kl_reward_coef > 0
    ref_model = Policy(copy.deepcopy(lm)).eval().requires_grad_(False) if needs_ref else None
    if d.enabled:
        distributed.shard(model, d, device)
    task = load_task(cfg.task, cfg.task_options)
    train_problems, eval_problems = split_problems(task, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    return Run(cfg, d, out, device, attention, model, tokenizer, ref_model, task, train_problems, eval_problems,
               optimizer, scheduler, t_start)


def resume(r: Run) -> None:
    """With --resume: the initial model's saved evaluation (recomputed when it is lost or damaged,
    before the checkpoint loads), then the newest usable checkpoint (weights, optimiser, schedule,
    RNG states); sets r.start_step and r.before."""
    cfg = r.cfg
    if not cfg.resume:
        return
    saved = read_json(r.out / "config.json")  # validate() checked it is there and matches
    if r.eval_problems:
        before_file = r.out / "eval_before.json"
        problem = None
        if r.d.main:
            try:
                r.before = read_json(before_file)
                if not isinstance(r.before, dict) or not all(m in r.before for m in (*METRICS, "per_problem")):
                    raise RunFileError(f"{before_file} does not hold an evaluation summary")
            except RunFileError as e:
                problem, r.before = str(e), None
        r.before, problem = distributed.broadcast((r.before, problem), r.d)
        if problem is not None:  # evaluate the initial model again, before the checkpoint loads
            r.say(f"ia-train: {problem}; evaluating the initial model again", err=True)
            _evaluate_initial(r)
    state = checkpoint.load(r.out / "checkpoints", r.model.lm, r.optimizer, r.scheduler,
                            warn=lambda line: r.say(line, err=True), dist=r.d)
    r.start_step = state["step"]
    changes = resume_changes(saved, cfg)
    r.say(f"ia-train: resuming at step {r.start_step} from {state['checkpoint']}"
          + (f"; changed settings: {', '.join(changes)}" if changes else ""))


def start_log(r: Run) -> MetricsLog:
    """config.json (the settings of this invocation), the metrics log (cut back to the checkpoint's
    step on resume), the run's facts (r.info) and the opening line."""
    cfg = r.cfg
    r.info.update({"device": str(r.device), "attention": r.attention, "torch": torch.__version__,
                   "python": platform.python_version(), "threads": torch.get_num_threads(),
                   "parameters": sum(p.numel() for p in r.model.parameters()), "world_size": r.d.world_size})
    distributed.barrier(r.d)  # every rank has read config.json and the metrics before rank 0 rewrites them
    if not r.d.main:
        return NoLog()
    write_json(r.out / "config.json", cfg.to_dict())
    log = MetricsLog(r.out, resume_step=r.start_step if cfg.resume else None, tensorboard=cfg.tensorboard)
    ranks = f", {r.d.world_size} processes (FSDP)" if r.d.enabled else ""
    r.say(f"ia-train: model {cfg.model} ({r.info['parameters'] / 1e6:.2f} M parameters), task {cfg.task}, "
          f"objective {cfg.objective} (k={cfg.k}, n={cfg.n}, alpha={cfg.alpha}), device {r.device}{ranks}, "
          f"attention {r.attention}")
    return log


class NoLog:
    """The metrics log of ranks other than 0."""

    def log(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _evaluate_initial(r: Run) -> None:
    r.before, samples = evaluate(r.model, r.tokenizer, r.task, r.eval_problems, r.cfg, "before", r.d)
    if r.d.main:
        write_json(r.out / "eval_before.json", r.before)
        write_json(r.out / "samples_before.json", samples[:50], indent=1)


def evaluate_before(r: Run) -> None:
    """The initial model on the held-out problems (kept from the killed run when resuming)."""
    cfg = r.cfg
    if not r.eval_problems:
        return
    if r.before is None:
        _evaluate_initial(r)
    b = r.before
    r.say(f"before: pass@1 {b['pass@1']:.3f}  pass@{cfg.k} {b['pass@k']:.3f}  "
          f"maj@{cfg.k} {b['maj@k']:.3f}  mean tokens {b['mean_tokens']:.1f}")


def train(r: Run, log: MetricsLog) -> tuple[dict, float]:
    """Steps start_step .. steps (or --stop-after), each logged and checkpointed on schedule;
    returns (the last step's row, the seconds spent)."""
    cfg = r.cfg
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(range(r.start_step, last_step), desc="train", unit="step", initial=r.start_step, total=cfg.steps,
               disable=not r.d.main)
    t_train = time.time()
    row: dict = {}
    for step in bar:
        row = train_step(r, step)
        log.log(row)
        bar.set_postfix(acc=f"{row['accuracy']:.2f}", tok=f"{row['mean_tokens']:.0f}", kl=f"{row.get('approx_kl', 0):.3f}")
        done = step + 1
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
            save_checkpoint(r, done)
    bar.close()
    log.close()
    return row, time.time() - t_train


def step_problems(r: Run, step: int) -> list:
    """The step's prompts_per_step training problems: the next ones in the training list, cycling."""
    per_step = r.cfg.prompts_per_step
    position = (step * per_step) % len(r.train_problems)
    return [r.train_problems[(position + i) % len(r.train_problems)] for i in range(per_step)]


def mean_abs_advantage(advantages: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Mean |advantage| per response ([B]) or per response token ([B, T])."""
    if advantages.dim() == 1:
        return float(advantages.abs().mean())
    return float(advantages.abs().sum() / response_mask.sum().clamp(min=1))


def train_step(r: Run, step: int) -> dict:
    """One step: rollouts -> rewards -> advantages -> PPO epochs; returns the step's metrics row.
    Under a launcher each rank takes its block of the step's prompts (sampling with its own seed)."""
    cfg, device, d = r.cfg, r.device, r.d
    torch.manual_seed(distributed.rank_seed(step_seed(cfg.seed, step), d))
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    problems = distributed.my_block(step_problems(r, step), d)
    # --- rollouts
    t0 = time.time()
    with gathered(r.model):
        ro = make_engine(cfg.rollout, r.model, r.tokenizer).generate(
            [format_prompt(r.tokenizer, p.prompt) for p in problems], cfg.n, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=max(cfg.eval_batch, len(problems) * cfg.n))
    t_sample = time.time() - t0
    # --- rewards and advantages
    rows = [problems[i // cfg.n] for i in range(len(ro.texts))]
    ended = finished(ro, r.tokenizer)
    scores = scored_rewards(r.task, rows, ro.texts, ended, cfg)
    correct = scores >= 0.5
    rewards = scores
    if cfg.alpha > 0:
        # Arora & Zanette's rule: a response cut off at --max-new-tokens (no EOS) scores 0 and stays
        # out of its prompt's length statistics, else the penalty would reward the long tail it cuts.
        rewards = ia_kernels.length_penalized_rewards(correct, ro.lengths, cfg.n, alpha=cfg.alpha, finished=ended)
    # the majority objective votes as the evaluation does: a cut-off response casts no vote
    answers = answer_ids(final_answers(r.task, rows, ro.texts, ended, cfg)) if cfg.objective == "majority" else None
    advantages = ia_kernels.group_advantages(
        rewards.to(device), cfg.n, estimator=cfg.objective, k=cfg.k if cfg.objective in USES_K else None,
        answers=None if answers is None else answers.to(device)).float().cpu()
    # --- PPO (and the KL terms against the reference model)
    t0 = time.time()
    micro = ro.input_ids.shape[0] // (cfg.minibatches * cfg.grad_accum)
    old_logp = old_logprobs(r, ro, micro)
    ref_logp = sequence_logprobs(r.ref_model, ro, cfg, device, micro) if r.ref_model is not None else None
    extra = {}
    if cfg.kl_reward_coef > 0:
        sample_logp = old_logp
        if sample_logp is None:  # on-policy: the loss would compute them itself; the reward needs them now
            sample_logp = ro.logprobs
        if sample_logp is None:
            with gathered(r.model):
                sample_logp = sequence_logprobs(r.model, ro, cfg, device, micro)
        advantages, kl_seq = kl_reward_advantages(advantages, sample_logp, ref_logp, ro.response_mask.float(),
                                                  cfg.kl_reward_coef)
        extra["kl_k1"] = float(kl_seq.mean())
    stats = ppo_update(r.model, r.optimizer, r.scheduler, ro, old_logp, ref_logp if cfg.kl_coef > 0 else None,
                       advantages, cfg, device, generator, d)
    t_update = time.time() - t0
    batch = distributed.mean_over_ranks(
        {"reward": float(rewards.mean()), "accuracy": float(correct.float().mean()),
         "mean_tokens": float(ro.lengths.float().mean()), "adv_abs": mean_abs_advantage(advantages, ro.response_mask), **extra}, d)
    row = {"step": step + 1, **batch,
           "lr": r.scheduler.get_last_lr()[0], "time_sample": t_sample, "time_update": t_update, **stats}
    if not np.isfinite(stats.get("loss", 0.0)):
        raise TrainingDiverged(f"step {step + 1}: the loss is {stats['loss']}; the weights are no longer usable, "
                               "so no checkpoint was written; lower --lr or resume from the last checkpoint")
    return row


def save_checkpoint(r: Run, done: int) -> None:
    """A checkpoint after step `done`, unless the weights stopped being finite."""
    lm = r.model.lm
    bad = [name for name, p in lm.named_parameters() if not torch.isfinite(distributed.local_tensor(p)).all()][:1]
    bad = distributed.gather_lists(bad, r.d)
    if bad:
        raise TrainingDiverged(f"step {done}: {bad[0]} holds non-finite values; no checkpoint was written "
                               "(the last one is kept); lower --lr or --max-grad-norm")
    checkpoint.save(r.out / "checkpoints", done, lm, r.optimizer, r.scheduler,
                    {"data_position": done * r.cfg.prompts_per_step}, dist=r.d)


def finish(r: Run, row: dict, train_seconds: float) -> dict:
    """The trained model on the held-out problems, the plots, the table and summary.json."""
    cfg, out = r.cfg, r.out
    summary = {"k": cfg.k, "n": cfg.eval_n, "config": cfg.to_dict(), "info": r.info,
               "train_seconds": train_seconds}
    if r.eval_problems:
        after, samples = evaluate(r.model, r.tokenizer, r.task, r.eval_problems, cfg, "after", r.d)
        summary.update(before=r.before, after=after, change=change(r.before, after, seed=cfg.seed))
    r.info["attention_calls"] = dict(ATTENTION_CALLS)
    summary["last_step"] = row
    summary["wall_seconds"] = time.time() - r.t_start
    if not r.d.main:
        return summary
    if r.eval_problems:
        write_json(out / "samples_after.json", samples[:50], indent=1)
    with writing(out / "training_curves.png"):
        plots.training_curves(read_metrics(out), out / "training_curves.png",
                              title=f"{cfg.task} / {cfg.objective} (k={cfg.k}, n={cfg.n})")
    if r.eval_problems:
        with writing(out / "before_after.png"):
            plots.before_after(summary, out / "before_after.png")
        print(summary_table(summary))
    write_json(out / "summary.json", summary)
    print(f"wrote {out}/summary.json, metrics.jsonl, training_curves.png"
          f"{', before_after.png' if r.eval_problems else ''} in {summary['wall_seconds']:.0f}s", flush=True)
    return summary

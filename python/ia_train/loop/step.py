"""One training step: rollouts -> rewards -> advantages -> PPO update, and the step's metrics row
(with its phase split). Reseeded from (seed, step), so a step's rollouts depend only on the weights
and the step number."""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation.metrics import answer_ids
from ..models import format_prompt
from ..rewards import final_answers, finished, scored_rewards
from ..rollout import Rollout
from ..runtime import distributed
from ..runtime.distributed import gathered
from ..runtime.seeding import step_seed
from .advantages import (kl_reward_advantages, mean_abs_advantage, penalized_rewards, sequence_advantages,
                         whiten_advantages)
from .forward import sequence_logprobs
from .phases import PhaseClock
from .state import Run
from .update import ppo_update


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite; the message is one line naming the step."""


def step_problems(r: Run, step: int) -> list:
    """The step's prompts_per_step training problems: the next ones in the training list, cycling."""
    per_step = r.cfg.prompts_per_step
    position = (step * per_step) % len(r.train_problems)
    return [r.train_problems[(position + i) % len(r.train_problems)] for i in range(per_step)]


def old_logprobs(r: Run, ro: Rollout, micro: int) -> torch.Tensor | None:
    """The PPO's old log-probs: None with one optimiser step per batch (on-policy: the loss pass
    computes them itself, ratio 1); else the sampler's own when the engine kept them (the weights
    that sampled are the ones before the update); else one no-grad pass over the batch."""
    cfg = r.cfg
    if cfg.ppo_epochs * cfg.minibatches == 1:
        return None
    if ro.logprobs is not None:
        return ro.logprobs
    with gathered(r.model):
        return sequence_logprobs(r.model, ro, cfg, r.device, micro, r.hooks.kernels)


def train_step(r: Run, step: int) -> dict:
    """One step: rollouts -> rewards -> advantages -> PPO epochs; returns the step's metrics row.
    Under a launcher each rank takes its block of the step's prompts (sampling with its own seed)."""
    cfg, device, d, kernels = r.cfg, r.device, r.d, r.hooks.kernels
    clock = PhaseClock()
    torch.manual_seed(distributed.rank_seed(step_seed(cfg.seed, step), d))
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    problems = distributed.my_block(step_problems(r, step), d)
    with clock("generation"), gathered(r.model):
        ro = r.engine.generate(
            [format_prompt(r.tokenizer, p.prompt) for p in problems], cfg.n, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=max(cfg.eval_batch, len(problems) * cfg.n))
    with clock("rewards"):
        rows = [problems[i // cfg.n] for i in range(len(ro.texts))]
        ended = finished(ro, r.tokenizer)
        scores = scored_rewards(r.task, rows, ro.texts, ended, cfg)
        rewards = penalized_rewards(kernels, cfg, scores, ro.lengths, ended)
        # the majority objective votes as the evaluation does: a response without a final answer
        # (cut off, or none found) casts no vote (answer id -1, ia_kernels.NO_ANSWER)
        answers = answer_ids(final_answers(r.task, rows, ro.texts, ended, cfg)) if cfg.objective == "majority" else None
        advantages = sequence_advantages(kernels, cfg, rewards, answers, device)
    micro = ro.input_ids.shape[0] // (cfg.minibatches * cfg.grad_accum)
    with clock("old_logp"):
        old_logp = old_logprobs(r, ro, micro)
    with clock("ref_logp"):
        ref_logp = sequence_logprobs(r.ref_model, ro, cfg, device, micro, kernels) if r.ref_model is not None else None
    extra = {}
    if cfg.kl_reward_coef > 0:
        sample_logp = old_logp
        if sample_logp is None:  # on-policy: the loss would compute them itself; the reward needs them now
            sample_logp = ro.logprobs
        if sample_logp is None:
            with clock("old_logp"), gathered(r.model):
                sample_logp = sequence_logprobs(r.model, ro, cfg, device, micro, kernels)
        advantages, kl_seq = kl_reward_advantages(advantages, sample_logp, ref_logp, ro.response_mask.float(),
                                                  cfg.kl_reward_coef)
        extra["kl_k1"] = float(kl_seq.mean())
    if cfg.whiten_advantages:  # OpenRLHF's replay-buffer normalisation, over every rank's responses
        advantages = whiten_advantages(advantages, ro.response_mask, lambda t: distributed.all_sum(t, d))
    stats = ppo_update(r.model, r.optimizer, r.scheduler, ro, old_logp, ref_logp if cfg.kl_coef > 0 else None,
                       advantages, cfg, device, generator, d, kernels=kernels, clock=clock)
    batch = distributed.mean_over_ranks(
        {"reward": float(rewards.mean()), "accuracy": float((scores >= 0.5).float().mean()),
         "mean_tokens": float(ro.lengths.float().mean()), "adv_abs": mean_abs_advantage(advantages, ro.response_mask),
         **extra}, d)
    t = clock.seconds
    row = {"step": step + 1, **batch, "lr": r.scheduler.get_last_lr()[0],
           "time_sample": t["generation"], "time_update": t["old_logp"] + t["ref_logp"] + t["loss"] + t["optimizer"],
           **clock.row(), **stats}
    if not np.isfinite(stats.get("loss", 0.0)):
        raise TrainingDiverged(f"step {step + 1}: the loss is {stats['loss']}; the weights are no longer usable, "
                               "so no checkpoint was written; lower --lr or resume from the last checkpoint")
    return row

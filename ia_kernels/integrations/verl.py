"""ia_kernels inside verl (0.9.1): loaded by `import verl` through the `verl.plugins` entry point.

`pip install ia-kernels` is all a verl user needs; the config then chooses (Hydra overrides):

    algorithm.adv_estimator=ia_passk +algorithm.ia_kernels.k=4            # PKPO pass@4 (loo-1)
    algorithm.adv_estimator=ia_rloo_length_penalty +algorithm.ia_kernels.alpha=0.1
    actor_rollout_ref.actor.policy_loss.loss_mode=ia_ppo                   # ia_kernels' PPO loss
    actor_rollout_ref.model.use_fused_kernels=True \\
    actor_rollout_ref.model.fused_kernel_options.impl_backend=ia_kernels   # log-probs by linear_logprobs

Advantage estimators (verl's registry; each sample's score is its token-level rewards summed, its
group the `uid` column, settings from `algorithm.ia_kernels`):

    ia_passk                 PKPO's unbiased pass@k values (k, variant: "loo-1" | "loo" | "s")
    ia_passk_chen            Chen et al.'s analytic pass@k advantages (binary scores; k, eps)
    ia_rloo_length_penalty   Arora & Zanette: length-penalised rewards (alpha, threshold: a score >
                             threshold is correct, default 0.5; lengths = response tokens; a response
                             filling the whole response width was cut off and scores 0), then RLOO
    ia_rloo, ia_grpo, ia_dr_grpo, ia_reinforce
                             the plain estimators (ia_grpo honours norm_adv_by_std_in_grpo=False as
                             dr_grpo; eps default 1e-6 as verl's)

A group of one sample gets advantage 0 from ia_rloo / ia_grpo (verl's rloo and grpo give it its score).
A NaN score is "no reward" (nan_policy="omit"). Policy loss `ia_ppo`: ia_kernels' `ppo_loss` with
verl's clip_ratio(_low/_high), clip_ratio_c (dual clip), loss_agg_mode and global batch normalisers;
rollout-correction weights multiply each token's loss. Nothing here reads environment variables.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

import ia_kernels as ik
from ia_kernels.ops.advantages import group_ids

from verl.trainer.ppo import core_algos

__all__ = ["ESTIMATORS", "ia_ppo_loss", "install_logprob_backend"]

# registered name -> (group_advantages estimator, length penalty first)
ESTIMATORS = {
    "ia_passk": ("passk", False),
    "ia_passk_chen": ("passk_chen", False),
    "ia_rloo_length_penalty": ("rloo", True),
    "ia_rloo": ("rloo", False),
    "ia_grpo": ("grpo", False),
    "ia_dr_grpo": ("dr_grpo", False),
    "ia_reinforce": ("reinforce", False),
}
_SETTINGS = ("k", "variant", "eps", "alpha", "threshold")


def _settings(config) -> dict:
    """`algorithm.ia_kernels` of the user's config (DictConfig, dataclass config or dict)."""
    raw = None if config is None else config.get("ia_kernels", None)
    settings = {} if raw is None else {key: raw[key] for key in raw}
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ValueError(f"algorithm.ia_kernels has unknown settings {unknown}; known: {', '.join(_SETTINGS)}")
    return settings


def _estimator(name: str, estimator: str, length_penalty: bool):
    def compute(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None, config=None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        s = _settings(config)
        if index is None:
            raise ValueError(f"adv_estimator={name} needs the uid column (one group per prompt)")
        scores = token_level_rewards.sum(dim=-1).to(torch.float32)
        groups = group_ids(index, scores.numel(), scores.device, name="index (uid)")
        if length_penalty:
            if s.get("alpha") is None:
                raise ValueError(f"adv_estimator={name} needs algorithm.ia_kernels.alpha (the length penalty's "
                                 f"weight in [0, 1]), e.g. +algorithm.ia_kernels.alpha=0.1")
            lengths = response_mask.sum(dim=-1)
            # Arora & Zanette's truncation rule: a response cut off at the length limit scores 0 and
            # stays out of its prompt's length statistics. verl pads every response to the limit
            # (data.max_response_length), so one that fills the whole width was cut off.
            finished = lengths < response_mask.shape[-1]
            penalised = ik.length_penalized_rewards(scores, lengths, groups, alpha=s["alpha"],
                                                    threshold=s.get("threshold", 0.5), finished=finished)
            scores = torch.where(torch.isnan(scores), scores, penalised.to(scores.dtype))
        est = estimator
        if est == "grpo" and config is not None and not config.get("norm_adv_by_std_in_grpo", True):
            est = "dr_grpo"
        options: dict[str, Any] = {"eps": float(s.get("eps", 1e-6))}
        if est in ("passk", "passk_chen"):
            if s.get("k") is None:
                raise ValueError(f"adv_estimator={name} needs algorithm.ia_kernels.k (samples per pass@k "
                                 f"evaluation, <= rollout.n), e.g. +algorithm.ia_kernels.k=4")
            options["k"] = int(s["k"])
        if est == "passk":
            options["variant"] = s.get("variant", "loo-1")
        with torch.no_grad():
            adv = ik.group_advantages(scores, groups, estimator=est, nan_policy="omit", **options)
        adv = adv.to(token_level_rewards.dtype)[:, None] * response_mask
        return adv, adv

    compute.__name__ = f"compute_{name}_advantage"
    compute.__doc__ = f"verl advantage estimator {name!r}: ia_kernels.group_advantages(estimator={estimator!r})."
    return compute


def ia_ppo_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss `ia_ppo`: verl's vanilla clipped loss (dual clip included), computed by ia_kernels."""
    if config is None:
        raise ValueError("policy loss ia_ppo needs the actor config")
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.get("clip_ratio_low") is not None else clip
    high = config.clip_ratio_high if config.get("clip_ratio_high") is not None else clip
    dual = config.get("clip_ratio_c", 3.0)
    info = dict(config.get("global_batch_info", None) or {})
    dp = info.get("dp_size", 1) or 1
    # verl's agg_loss normalises by global counts and multiplies by dp_size (DDP/FSDP average over ranks):
    # the same as dividing by the global count / dp_size.
    options: dict[str, Any] = {}
    mode, factor = loss_agg_mode, 1.0
    if mode == "token-sum":  # the token sum (times dp_size): a token mean over one token
        mode, options["num_tokens"], factor = "token-mean", 1, dp
    elif mode == "token-mean" and info.get("batch_num_tokens") is not None:
        options["num_tokens"] = info["batch_num_tokens"] / dp
    elif mode.startswith("seq-mean") and info.get("global_batch_size") is not None:
        options["num_sequences"] = info["global_batch_size"] / dp
    if mode == "seq-mean-token-sum-norm":
        options["norm_length"] = info.get("loss_scale_factor") or response_mask.shape[-1]
    loss, metrics = ik.ppo_loss(log_prob, old_log_prob, advantages, response_mask, clip_low=low, clip_high=high,
                                dual_clip=dual, aggregation=mode, importance_weights=rollout_is_weights,
                                check_finite=False, **options)
    loss = loss * factor
    mask = response_mask.bool()
    log_ratio = (log_prob.detach() - old_log_prob).clamp(-20.0, 20.0)
    ppo_kl = (-log_ratio)[mask].mean() if bool(mask.any()) else log_ratio.new_zeros(())
    return loss, {"actor/pg_clipfrac": (metrics["clip_frac_low"] + metrics["clip_frac_high"]).item(),
                  "actor/ppo_kl": ppo_kl.item(),
                  "actor/pg_clipfrac_lower": metrics["clip_frac_dual"].item()}


def install_logprob_backend() -> None:
    """`fused_kernel_options.impl_backend=ia_kernels`: verl's fused forward, log-probs by linear_logprobs."""
    from verl.models.transformers import monkey_patch
    from verl.utils.experimental import torch_functional

    fused = torch_functional.FusedLinearForPPO
    if getattr(fused, "_ia_kernels", False):
        return
    init, forward = fused.__init__, fused.forward

    @functools.wraps(init)
    def __init__(self, chunk_size: int = 512, impl_backend: str = "torch"):
        init(self, chunk_size=chunk_size, impl_backend="torch" if impl_backend == "ia_kernels" else impl_backend)
        self.impl_backend = impl_backend

    @functools.wraps(forward)
    def fused_forward(self, hidden_states, vocab_weights, input_ids, temperature: float = 1.0):
        if self.impl_backend != "ia_kernels":
            return forward(self, hidden_states, vocab_weights, input_ids, temperature)
        return ik.linear_logprobs(hidden_states, vocab_weights, input_ids.to(torch.int64), temperature=temperature,
                                  return_entropy=True)

    fused.__init__, fused.forward, fused._ia_kernels = __init__, fused_forward, True

    patch = monkey_patch.patch_forward_with_backends

    @functools.wraps(patch)
    def patch_forward_with_backends(model, use_fused_kernels: bool = False, fused_kernels_backend: str = None):
        if use_fused_kernels and fused_kernels_backend == "ia_kernels":
            patch(model, use_fused_kernels=True, fused_kernels_backend="torch")
            model._verl_fused_kernels_backend = "ia_kernels"
            return
        patch(model, use_fused_kernels=use_fused_kernels, fused_kernels_backend=fused_kernels_backend)

    monkey_patch.patch_forward_with_backends = patch_forward_with_backends


def register() -> None:
    """Adds the estimators, the policy loss and the log-prob backend to verl (idempotent)."""
    for name, (estimator, length_penalty) in ESTIMATORS.items():
        if name not in core_algos.ADV_ESTIMATOR_REGISTRY:
            core_algos.register_adv_est(name)(_estimator(name, estimator, length_penalty))
    core_algos.register_policy_loss("ia_ppo")(ia_ppo_loss)
    install_logprob_backend()


register()

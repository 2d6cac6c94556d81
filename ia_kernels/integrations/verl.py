"""ia_kernels inside verl (0.9.1): loaded by `import verl` through the `verl.plugins` entry point.

`pip install ia-kernels` is all a verl user needs; the config then chooses (Hydra overrides):

    algorithm.adv_estimator=ia_passk +algorithm.ia_kernels.k=4            # PKPO pass@4 (loo-1)
    algorithm.adv_estimator=ia_rloo_length_penalty +algorithm.ia_kernels.alpha=0.1
    actor_rollout_ref.actor.policy_loss.loss_mode=ia_ppo                   # ia_kernels' PPO loss
    actor_rollout_ref.model.use_fused_kernels=True \\
    actor_rollout_ref.model.fused_kernel_options.impl_backend=ia_kernels   # log-probs by linear_logprobs

`python -m ia_kernels.integrations.verl_check` says whether verl registered the plugin, and why not
(verl itself logs a plugin that failed to load at DEBUG level only).

Advantage estimators (verl's registry; each sample's score is its token-level rewards summed, its
group the `uid` column, settings from `algorithm.ia_kernels`; a setting the chosen estimator does
not use is an error, never silently ignored):

    ia_passk                 PKPO's unbiased pass@k values (k, variant: "loo-1" | "loo" | "s")
    ia_passk_chen            Chen et al.'s analytic pass@k advantages (binary scores; k, eps)
    ia_rloo_length_penalty   Arora & Zanette: length-penalised rewards (alpha, threshold: a score >
                             threshold is correct, default 0.5), then RLOO. Lengths are the response's
                             generated tokens (response_mask); a response whose tokens reach the
                             response length limit (actor_rollout_ref.rollout.response_length, read
                             from verl's config, or algorithm.ia_kernels.max_response_length) was cut
                             off: it scores 0 and stays out of its prompt's length statistics. (verl
                             hands estimators no EOS flag: a response ending with EOS exactly at the
                             limit counts as cut off, as verl's response_length/clip_ratio counts it,
                             and a multi-turn response cut off inside a tool's output, where the mask
                             is 0, is not seen as cut off.)
    ia_rloo, ia_grpo, ia_dr_grpo, ia_reinforce
                             the plain estimators (eps default 1e-6 as verl's)

`algorithm.norm_adv_by_std_in_grpo` (verl's default True) is honoured as verl's own estimators honour
it: ia_grpo without it is dr_grpo; ia_passk with it divides each group's advantages by its score std
+ eps, as verl's grpo_passk does (so ia_passk with k = n equals grpo_passk either way); ia_passk_chen
is normalised by the pass@k std by definition and refuses False. ia_rloo, ia_rloo_length_penalty,
ia_reinforce and ia_dr_grpo do not scale, as verl's rloo does not.

A group of one sample gets advantage 0 from ia_rloo / ia_grpo (verl's rloo and grpo give it its score).
A NaN score is "no reward" (nan_policy="omit"). Groups in which no response has a token (verl's
synthetic padding samples) get advantage 0 and stay out of the estimator. Policy loss `ia_ppo`:
ia_kernels' `ppo_loss` with verl's clip_ratio(_low/_high), clip_ratio_c (dual clip), loss_agg_mode and
global batch normalisers; rollout-correction weights multiply each token's loss. Nothing here reads
environment variables.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import torch

import ia_kernels as ik
from ia_kernels.ops.advantages import PASSK_VARIANTS, group_ids

from verl.trainer.ppo import core_algos

__all__ = ["ESTIMATORS", "SETTINGS", "ia_ppo_loss", "install_logprob_backend", "register"]

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
# algorithm.ia_kernels settings -> the estimators that read them
SETTINGS = {
    "k": ("ia_passk", "ia_passk_chen"),
    "variant": ("ia_passk",),
    "eps": ("ia_grpo", "ia_passk", "ia_passk_chen"),
    "alpha": ("ia_rloo_length_penalty",),
    "threshold": ("ia_rloo_length_penalty",),
    "max_response_length": ("ia_rloo_length_penalty",),
}
# where verl's config holds the response length limit its rollout cuts responses at
_LIMIT_KEYS = ("actor_rollout_ref.rollout.response_length", "data.max_response_length")
_BATCH_INFO = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")


def _real(name: str, value, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real setting (not bool, not str), optionally within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high if high is not None else 'inf'}]; got {value}")
    return value


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    return int(value)


def _settings(name: str, config) -> dict:
    """`algorithm.ia_kernels` of the user's config (DictConfig, dataclass config or dict), validated
    for estimator `name`: unknown keys, keys this estimator does not read and bad values raise."""
    raw = None if config is None else config.get("ia_kernels", None)
    settings = {} if raw is None else {key: raw[key] for key in raw}
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"algorithm.ia_kernels has unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    for key in settings:
        if name not in SETTINGS[key]:
            raise ValueError(f"algorithm.ia_kernels.{key} is not used by adv_estimator={name} (it is read by "
                             f"{', '.join(SETTINGS[key])}): remove it rather than have it silently ignored")
    out = {}
    if settings.get("k") is not None:
        out["k"] = _count("algorithm.ia_kernels.k", settings["k"])
    if settings.get("variant") is not None:
        if settings["variant"] not in PASSK_VARIANTS:
            raise ValueError(f"algorithm.ia_kernels.variant must be one of {', '.join(PASSK_VARIANTS)}; "
                             f"got {settings['variant']!r}")
        out["variant"] = settings["variant"]
    if settings.get("eps") is not None:
        out["eps"] = _real("algorithm.ia_kernels.eps", settings["eps"], low=0.0)
    if settings.get("alpha") is not None:
        out["alpha"] = _real("algorithm.ia_kernels.alpha", settings["alpha"], low=0.0, high=1.0)
    if settings.get("threshold") is not None:
        out["threshold"] = _real("algorithm.ia_kernels.threshold", settings["threshold"])
    if settings.get("max_response_length") is not None:
        out["max_response_length"] = _count("algorithm.ia_kernels.max_response_length",
                                             settings["max_response_length"])
    return out


def _norm_by_std(config) -> bool:
    value = True if config is None else config.get("norm_adv_by_std_in_grpo", True)
    if not isinstance(value, bool):  # a string "False" would read as true
        raise ValueError(f"algorithm.norm_adv_by_std_in_grpo must be true or false; got {value!r}")
    return value


def _configured_limit(config) -> tuple[int, str] | None:
    """The response length limit of the verl config `config` (algorithm) belongs to, and its key."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        return None
    if not isinstance(config, DictConfig):
        return None
    root = config._get_root()
    for key in _LIMIT_KEYS:
        value = OmegaConf.select(root, key, default=None)
        if value is not None:
            return _count(key, value), key
    return None


def _response_limit(name: str, config, settings: dict, width: int) -> int:
    """The token limit verl's rollout cuts responses at: a response reaching it was cut off.

    verl's legacy trainer pads responses to this limit, but its default (v1) trainer pads each
    batch to the batch's longest response, so the response width says nothing about truncation.
    """
    explicit = settings.get("max_response_length")
    configured = _configured_limit(config)
    if explicit is not None and configured is not None and explicit != configured[0]:
        raise ValueError(f"algorithm.ia_kernels.max_response_length={explicit} disagrees with verl's "
                         f"{configured[1]}={configured[0]}: drop the setting (verl's value is read)")
    limit = explicit if explicit is not None else None if configured is None else configured[0]
    if limit is None:
        raise ValueError(f"adv_estimator={name} needs the response length limit to tell cut-off responses: "
                         f"found no {' or '.join(_LIMIT_KEYS)} in the config it was given; set "
                         f"algorithm.ia_kernels.max_response_length")
    if width > limit:
        raise ValueError(f"adv_estimator={name}: the batch's responses are {width} tokens wide, more than the "
                         f"response length limit {limit} ({_LIMIT_KEYS[0]} or "
                         f"algorithm.ia_kernels.max_response_length): the limit is not the one the rollout used")
    return limit


def _group_std(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each sample's group score std (Bessel-corrected, over scored samples; 0 for one), as verl's torch.std."""
    keep = ~torch.isnan(scores)
    _, inverse = torch.unique(ids, return_inverse=True)
    x = torch.where(keep, scores, 0.0).to(torch.float64)
    count = torch.bincount(inverse, weights=keep.to(torch.float64))
    mean = torch.bincount(inverse, weights=x) / count.clamp(min=1)
    dev = torch.where(keep, x - mean[inverse], 0.0)
    var = torch.bincount(inverse, weights=dev * dev) / (count - 1).clamp(min=1)
    return var.sqrt()[inverse]


def _estimator(name: str, estimator: str, length_penalty: bool):
    def compute(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None, config=None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        s = _settings(name, config)
        norm = _norm_by_std(config)
        if index is None:
            raise ValueError(f"adv_estimator={name} needs the uid column (one group per prompt)")
        scores = token_level_rewards.sum(dim=-1).to(torch.float32)
        groups = group_ids(index, scores.numel(), scores.device, name="index (uid)")
        ids = torch.arange(scores.numel(), device=scores.device) // groups if isinstance(groups, int) else groups
        if length_penalty:
            if s.get("alpha") is None:
                raise ValueError(f"adv_estimator={name} needs algorithm.ia_kernels.alpha (the length penalty's "
                                 f"weight in [0, 1]), e.g. +algorithm.ia_kernels.alpha=0.1")
            limit = _response_limit(name, config, s, response_mask.shape[-1])
            lengths = response_mask.sum(dim=-1)
            # Arora & Zanette's truncation rule: a response cut off at the length limit scores 0 and
            # stays out of its prompt's length statistics. Cut off = its tokens reach the limit (the
            # position after its last generated token); the padding width is no evidence (see
            # _response_limit).
            positions = torch.arange(1, response_mask.shape[-1] + 1, device=response_mask.device)
            span = torch.where(response_mask != 0, positions, 0).amax(dim=-1) if response_mask.shape[-1] else lengths
            finished = span < limit
            penalised = ik.length_penalized_rewards(scores, lengths, ids, alpha=s["alpha"],
                                                    threshold=s.get("threshold", 0.5), finished=finished)
            scores = torch.where(torch.isnan(scores), scores, penalised.to(scores.dtype))
        if estimator == "passk_chen" and not norm:
            raise ValueError(f"adv_estimator={name} cannot honour algorithm.norm_adv_by_std_in_grpo=False: Chen et "
                             f"al.'s pass@k advantages are normalised by the pass@k std by definition; use ia_passk "
                             f"(PKPO) for unnormalised pass@k advantages")
        est = "dr_grpo" if estimator == "grpo" and not norm else estimator
        if "eps" in s and est in ("dr_grpo", "passk") and not norm:
            raise ValueError(f"algorithm.ia_kernels.eps is not used by adv_estimator={name} with "
                             f"algorithm.norm_adv_by_std_in_grpo=False (no std to add it to): remove it")
        eps = s.get("eps", 1e-6)
        options: dict[str, Any] = {"eps": eps}
        if est in ("passk", "passk_chen"):
            if s.get("k") is None:
                raise ValueError(f"adv_estimator={name} needs algorithm.ia_kernels.k (samples per pass@k "
                                 f"evaluation, <= rollout.n), e.g. +algorithm.ia_kernels.k=4")
            options["k"] = s["k"]
        if est == "passk":
            options["variant"] = s.get("variant", "loo-1")
        # Groups with no response token anywhere (verl's v1 trainer pads batches with such synthetic
        # samples, in groups of their own that may hold fewer than k) carry no loss: leave them out.
        live = (response_mask != 0).any(dim=-1)
        _, inverse = torch.unique(ids, return_inverse=True)
        keep = (torch.bincount(inverse, weights=live.to(torch.float64)) > 0)[inverse]
        adv = torch.zeros_like(scores)
        if bool(keep.any()):
            with torch.no_grad():
                adv[keep] = ik.group_advantages(scores[keep], ids[keep], estimator=est, nan_policy="omit",
                                                **options).to(adv.dtype)
                if norm and est == "passk":
                    # verl's grpo_passk convention: advantages / (group score std + eps)
                    adv[keep] = (adv[keep].double() / (_group_std(scores[keep], ids[keep]) + eps)).to(adv.dtype)
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
    unknown = sorted(set(info) - set(_BATCH_INFO))
    if unknown:  # verl's agg_loss takes exactly these keywords
        raise ValueError(f"actor global_batch_info has unknown keys {unknown}; known: {', '.join(_BATCH_INFO)}")
    dp = info.get("dp_size", 1) or 1
    # verl's agg_loss normalises by global counts and multiplies by dp_size (DDP/FSDP average over ranks):
    # the same as dividing by the global count / dp_size. Without the global count, verl refuses dp_size > 1.
    options: dict[str, Any] = {}
    mode, factor = loss_agg_mode, 1.0
    if mode == "token-sum":  # the token sum (times dp_size): a token mean over one token
        mode, options["num_tokens"], factor = "token-mean", 1, dp
    elif mode == "token-mean":
        if info.get("batch_num_tokens") is not None:
            options["num_tokens"] = info["batch_num_tokens"] / dp
        elif dp > 1:
            raise ValueError("policy loss ia_ppo: (global) batch_num_tokens is required when dp_size > 1")
    elif mode.startswith("seq-mean"):
        if info.get("global_batch_size") is not None:
            options["num_sequences"] = info["global_batch_size"] / dp
        elif dp > 1:
            raise ValueError("policy loss ia_ppo: global_batch_size is required when dp_size > 1")
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
    if "ia_ppo" not in core_algos.POLICY_LOSS_REGISTRY:
        core_algos.register_policy_loss("ia_ppo")(ia_ppo_loss)
    install_logprob_backend()


register()

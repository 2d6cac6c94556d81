"""ia_kernels inside TRL's GRPOTrainer: one import, one config class.

    from ia_kernels.integrations.trl import IAGRPOConfig as GRPOConfig, IAGRPOTrainer as GRPOTrainer
    args = GRPOConfig(..., advantage_estimator="passk", k=4, length_penalty_alpha=0.1)

`IAGRPOConfig` is a `trl.GRPOConfig` with six more fields; `IAGRPOTrainer` is a `trl.GRPOTrainer`
that overrides two things and nothing else:

- the advantages: after TRL has generated and scored the completions, the rewards of every process
  (TRL gathers them) are combined as TRL combines them (weighted sum of the reward functions; a
  completion every function scored None is "no reward", NaN), optionally length-penalised
  (Arora & Zanette, on the completion lengths gathered from every process, since the group
  statistics need the whole group), and passed to `group_advantages(..., nan_policy="omit")`.
  Each process keeps its own slice, as TRL does.
- the loss: `linear_ppo_loss` on the policy's last hidden states and LM-head weight (no [N, V]
  logits), with TRL's loss type, clipping, temperature, masks, KL and gradient-accumulation scaling.
  It runs as the LM head module's forward, inside the model's forward, so that the hooks FSDP2 and
  DeepSpeed ZeRO-3 put on the head gather its weight and reduce its gradient. Settings the fused
  loss cannot express fall back to TRL's own loss with a one-time warning naming them (`FALLBACKS`).

Every setting is honoured or refused: a setting the chosen estimator does not read (scale_rewards,
passk_variant, correct_threshold) is a ValueError naming it, as are values of the wrong type (a
string for a bool: only "true"/"false" and HfArgumentParser's other spellings parse).

With the defaults (estimator "grpo", no length penalty, fused_loss=True) a training step equals
TRL's own step to fp32 precision, and the logged metrics are TRL's (tests/integrations/test_trl.py).
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx, nanmax, nanmin, nanstd

import ia_kernels as ik
from ia_kernels.core.numerics import ESTIMATORS_USING_K
from ia_kernels.ops.advantages import ESTIMATORS, PASSK_VARIANTS

__all__ = ["IAGRPOConfig", "IAGRPOTrainer", "FALLBACKS", "fused_head_loss", "output_head"]

# Settings the fused loss cannot express: the step runs TRL's own loss (warned once per setting).
FALLBACKS = {
    "loss_type": "cispo, sapo and vespo have no fused equivalent (grpo, bnpo, dr_grpo, dapo, luspo have)",
    "top_entropy_quantile": "< 1 masks tokens by the entropy of the current policy",
    "off_policy_mask_threshold": "the off-policy sequence mask needs the current log-probs before the loss",
    "entropy_coef": "TRL's entropy bonus (static or adaptive) is a token mean outside the loss type's aggregation",
    "router_aux_loss_coef": "MoE load-balancing loss (output_router_logits)",
    "multimodal inputs": "pixel values, image sizes or token type ids reach the model beside the text",
    "PEFT adapter on lm_head": "the LM head's effective weight is not one tensor (a LoRA layer or trainable tokens)",
}
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                    "token_type_ids", "mm_token_type_ids", "image_position_ids")
_TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_TRL_GRPO_EPS = 1e-4  # TRL divides by (std + 1e-4)
# HfArgumentParser's string_to_bool: the spellings a bool setting may arrive in from YAML or a CLI
_BOOL_STRINGS = {"yes": True, "true": True, "t": True, "y": True, "1": True,
                 "no": False, "false": False, "f": False, "n": False, "0": False}
# the scale_rewards value that describes each estimator other than grpo (the only one it configures):
# passk_chen divides by its pass@k std, the others by no std. Any other value would be ignored: refused.
_SCALING = {"dr_grpo": "none", "rloo": "none", "reinforce": "none", "passk": "none", "passk_chen": "group",
            "majority": "none"}


def _parse_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false (a bool, or one of the strings {', '.join(_BOOL_STRINGS)}); "
                     f"got {value!r}")


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


@dataclass
class IAGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the inference-aware settings.

    advantage_estimator: any `ia_kernels.group_advantages` estimator but "majority" (TRL has no
        answer ids): "grpo" (default: TRL's own group normalisation, eps 1e-4; scale_rewards="none"
        makes it dr_grpo), "dr_grpo", "rloo", "reinforce", "passk", "passk_chen".
    k: samples per objective evaluation for passk / passk_chen (<= num_generations). Evaluation
        groups smaller than k (num_generations_eval < k) use k = the group size.
    passk_variant: PKPO's baseline for passk ("loo-1" when not given, "loo", "s"); passk only.
    length_penalty_alpha: None (off) or alpha in [0, 1]: Arora & Zanette's reward
        1 - alpha * sigmoid((len - mean) / std) for correct completions (reward > correct_threshold
        and not cut off), 0 otherwise, statistics over the correct completions of the same prompt.
        Cut off = TRL's rule for `completions/clipped_ratio` and `mask_truncated_completions`: the
        last token is neither EOS nor the pad token. Completions with no reward stay NaN (advantage 0).
    correct_threshold: with length_penalty_alpha, a completion is correct when its combined reward
        exceeds it (a finite number; 0.5 when not given).
    fused_loss: True (default): the loss is `linear_ppo_loss` on hidden states; False: TRL's loss.
    scale_rewards: TRL's setting, for estimator "grpo" ("group" when not given). Another estimator
        is not configured by it: unset, it reads what the estimator does ("group" for passk_chen,
        which divides by its pass@k std, "none" for the others); any other value is refused.
    """

    advantage_estimator: str = field(default="grpo", metadata={"help": "ia_kernels.group_advantages estimator"})
    k: int | None = field(default=None, metadata={"help": "k of the pass@k objective (passk, passk_chen)"})
    passk_variant: str | None = field(default=None, metadata={"help": "PKPO baseline for passk: loo-1 (default), "
                                                                      "loo or s"})
    length_penalty_alpha: float | None = field(default=None, metadata={"help": "Arora & Zanette's alpha; None: off"})
    correct_threshold: float | None = field(default=None, metadata={"help": "with length_penalty_alpha: reward > "
                                                                            "threshold counts as correct (0.5)"})
    fused_loss: bool = field(default=True, metadata={"help": "linear_ppo_loss on hidden states (no [N, V] logits)"})
    scale_rewards: str | None = field(default=None, metadata={"help": "TRL's reward scaling for estimator grpo: "
                                                                      "group (default), batch or none"})

    def __post_init__(self):
        if self.scale_rewards is None:  # what the estimator does: TRL's default "group" for grpo
            est = self.advantage_estimator
            self.scale_rewards = _SCALING.get(est, "group") if isinstance(est, str) else "group"
        super().__post_init__()
        est = self.advantage_estimator
        if not isinstance(est, str) or est not in ESTIMATORS:
            raise ValueError(f"advantage_estimator must be one of {', '.join(e for e in ESTIMATORS if e != 'majority')}"
                             f"; got {est!r}")
        if est == "majority":
            raise ValueError("advantage_estimator='majority' needs answer ids, which TRL's reward functions do not "
                             "return; use it through ia_kernels.group_advantages directly")
        if est in ESTIMATORS_USING_K:
            if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
                raise ValueError(f"advantage_estimator={est!r} needs k, an int >= 1 (got k={self.k!r})")
            self.k = int(self.k)
            if self.k > self.num_generations:
                raise ValueError(f"k={self.k} is larger than num_generations={self.num_generations}: the pass@k "
                                 f"objective needs k samples per prompt")
        elif self.k is not None:
            raise ValueError(f"k is used by advantage_estimator 'passk' and 'passk_chen' only; got k={self.k} with "
                             f"advantage_estimator={est!r}")
        if est == "passk":
            if self.passk_variant is None:
                self.passk_variant = "loo-1"
            if self.passk_variant not in PASSK_VARIANTS:
                raise ValueError(f"passk_variant must be one of {', '.join(PASSK_VARIANTS)}; "
                                 f"got {self.passk_variant!r}")
            if self.passk_variant == "loo" and self.k >= self.num_generations:
                raise ValueError(f"passk_variant='loo' needs k < num_generations (its baseline draws k of the other "
                                 f"n - 1 samples); got k={self.k}, num_generations={self.num_generations}")
        elif self.passk_variant is not None:
            raise ValueError(f"passk_variant is used by advantage_estimator 'passk' only; got "
                             f"passk_variant={self.passk_variant!r} with advantage_estimator={est!r}")
        a = self.length_penalty_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0.0 <= a <= 1.0):
            raise ValueError(f"length_penalty_alpha must be None or a number in [0, 1]; got {a!r}")
        if a is None and self.correct_threshold is not None:
            raise ValueError(f"correct_threshold is used with length_penalty_alpha only (it decides which completions "
                             f"the length penalty counts as correct); got correct_threshold={self.correct_threshold!r} "
                             f"and no length_penalty_alpha")
        if a is not None:
            self.correct_threshold = 0.5 if self.correct_threshold is None else \
                _finite("correct_threshold", self.correct_threshold)
        self.fused_loss = _parse_bool("fused_loss", self.fused_loss)
        scale = self.scale_rewards
        if est != "grpo" and scale != _SCALING[est]:
            does = "divides by its pass@k std by definition" if _SCALING[est] == "group" else "does not divide by a std"
            raise ValueError(f"scale_rewards={scale!r} does not apply to advantage_estimator={est!r}, which {does} "
                             f"(scale_rewards is TRL's scaling of estimator 'grpo'): leave it unset "
                             f"(it reads {_SCALING[est]!r})")
        custom = est != "grpo" or a is not None
        if custom and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(f"multi_objective_aggregation={self.multi_objective_aggregation!r} normalises each "
                             f"reward function before summing, which only TRL's estimator grpo does: it cannot be "
                             f"combined with advantage_estimator={est!r}"
                             + (" or length_penalty_alpha" if a is not None else ""))
        if a is not None and scale == "batch":
            raise ValueError("scale_rewards='batch' (TRL's batch-std grpo) cannot be combined with "
                             "length_penalty_alpha: use scale_rewards='group' or 'none'")


# ---- the model side: hidden states, the LM head, the head's forward -----------------------------------

def _logit_transform(model) -> tuple[float, float | None]:
    """(logit_scale, softcap) of the model's config, read as TRL's fused LM head reads them."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = cfg.logits_scaling if cfg.model_type == "hyperclovax" else 1 / cfg.logits_scaling
    return (1.0 if scale is None else float(scale)), softcap


def output_head(base) -> tuple[torch.nn.Module, str | None]:
    """(the module whose weight projects the policy's hidden states, or the reason there is none).

    A PEFT `modules_to_save` head is resolved as its forward resolves it: the active adapter's trained
    copy (the original module when adapters are disabled). A LoRA layer or trainable tokens on the
    head leave no single weight tensor: the reason is FALLBACKS' "PEFT adapter on lm_head" (TRL 1.16
    refuses LoRA on lm_head itself, before any of this runs).
    """
    head = base.get_output_embeddings()
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):  # peft ModulesToSaveWrapper
        active = list(head.active_adapters)
        available = getattr(head, "_adapters", set(head.modules_to_save.keys()))
        if head.disable_adapters or not active or any(a not in available for a in active):
            head = head.original_module
        else:
            head = head.modules_to_save[active[0]]
    if hasattr(head, "base_layer") or hasattr(head, "original_module") or \
            not isinstance(getattr(head, "weight", None), torch.Tensor):
        return head, "PEFT adapter on lm_head"
    return head, None


def _call_as_forward(module: torch.nn.Module, hidden: torch.Tensor, fn):
    """fn(hidden, module.weight, module.bias), run as `module`'s forward.

    Calling the module runs the hooks distributed wrappers put on it: FSDP2 unshards a head wrapped
    as its own unit before the forward and reduce-scatters its gradient after backward, DeepSpeed
    ZeRO-3 gathers its partitioned weight and reduces its gradient. Reading `head.weight` outside
    the head's forward (as TRL 1.16's own fused head does) gets a shard whose gradient no rank
    averages, or an empty ZeRO-3 partition. TRL's `maybe_gather_lm_head_ctx` (a no-op unless ZeRO-3
    left the weight partitioned) guards the read as TRL guards its own.
    """
    had_own = "forward" in module.__dict__  # e.g. TRL's cast_lm_head_to_fp32 sets an instance forward
    previous = module.__dict__.get("forward")

    def forward(h):
        weight, bias = module.weight, module.bias
        with maybe_gather_lm_head_ctx(weight, bias):
            return fn(h, weight, bias)

    module.forward = forward
    try:
        return module(hidden)
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


def _loss_forward(self, *args, ia_kernels_loss=None, **kwargs):
    if ia_kernels_loss is None:
        return self._ia_kernels_previous_forward(*args, **kwargs)
    kwargs["use_cache"] = False
    return ia_kernels_loss(self.base_model(*args, **kwargs).last_hidden_state)


def _install_loss_forward(base) -> None:
    """`base(..., ia_kernels_loss=fn)` runs the backbone and returns fn(last hidden states [B, L, H]).

    Called through the trainer's (possibly DDP/FSDP/PEFT-wrapped) model, so every wrapper's forward
    hooks run as for TRL's own forward, and fn runs inside the model's forward (FSDP2's root keeps
    its parameters unsharded there). Without the keyword the forward is unchanged (generation too).
    Both forwards are methods bound to `base`, so a deep copy of the model (a reference model) is
    bound to the copy.
    """
    if getattr(base, "_ia_kernels_loss_forward", False):
        return
    previous = base.forward  # TRL's fused-head forward or the class's, bound to base
    base._ia_kernels_previous_forward = previous
    base.forward = types.MethodType(functools.wraps(previous)(_loss_forward), base)
    base._ia_kernels_loss_forward = True


def fused_head_loss(model, base, input_ids, attention_mask, completion_length: int, fn):
    """fn(hidden [B, T, H], weight, bias) on the states that predict the last `completion_length`
    tokens, run as the LM head's forward inside `model`'s forward (model: `base` or any wrapper of
    it). What IAGRPOTrainer's fused loss runs; `base` needs `_install_loss_forward`.
    """
    head, reason = output_head(base)
    if reason is not None:
        raise ValueError(f"the fused loss needs the LM head as one weight tensor: {FALLBACKS[reason]}")
    T = completion_length

    def on_hidden(hidden):
        # the state before each completion token predicts it
        return _call_as_forward(head, hidden[:, -T - 1:-1], fn)

    return model(input_ids=input_ids, attention_mask=attention_mask, ia_kernels_loss=on_hidden)


def _full(weight, bias):
    """A DTensor head that reached the forward still sharded (tensor parallelism) is gathered whole:
    every rank holds other sequences, so it is never passed as a vocabulary-parallel weight."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return weight, bias
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    if isinstance(bias, DTensor):
        bias = bias.full_tensor()
    return weight, bias


# ---- the trainer -----------------------------------------------------------------------------------

class IAGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with ia_kernels' advantages and fused loss (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, IAGRPOConfig):
            raise ValueError("IAGRPOTrainer needs args=IAGRPOConfig(...) (a trl.GRPOConfig with the ia_kernels fields)")
        self._ia_warned: set = set()
        self._ia_scored = None
        _install_loss_forward(self._ia_base_model())

    # ---- helpers ---------------------------------------------------------------------------------

    def _ia_warn(self, key: str, message: str) -> None:
        if key not in self._ia_warned:
            self._ia_warned.add(key)
            warnings.warn(f"ia_kernels: {message}", stacklevel=3)

    def _ia_base_model(self):
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # ---- advantages ------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._ia_scored = (rewards_per_func, completion_ids_list)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._ia_scored is not None:
            advantages = self._ia_advantages(*self._ia_scored)
            self._ia_scored = None
            if advantages is not None:
                output["advantages"] = advantages
        mode = "train" if self.model.training else "eval"
        # TRL's frac_reward_zero_std counts groups of equal raw rewards; with pass@k or a length penalty
        # most samples can carry zero advantage regardless: the fraction that does, over every process.
        everyone = self.accelerator.gather(output["advantages"].reshape(-1).float())
        self._metrics[mode]["frac_advantage_zero"].append((everyone == 0).float().mean().item())
        return output

    def _ia_advantages(self, rewards_per_func: torch.Tensor, completion_ids_list) -> torch.Tensor | None:
        args = self.args
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        estimator, alpha = args.advantage_estimator, args.length_penalty_alpha
        if estimator == "grpo" and alpha is None and (self.scale_rewards == "batch" or
                                                      self.multi_objective_aggregation != "sum_then_normalize"):
            return None  # TRL's own estimator (batch std, or per-function normalisation): TRL's advantages
        if estimator == "grpo" and self.scale_rewards == "none":
            estimator = "dr_grpo"
        device = rewards_per_func.device
        unscored = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[unscored] = torch.nan
        if alpha is not None:
            rewards = self._ia_length_penalty(rewards, completion_ids_list, n, mode)
        k = args.k if estimator in ESTIMATORS_USING_K else None
        if k is not None and k > n:
            self._ia_warn("k_eval", f"groups of {n} completions are smaller than k={k} (num_generations_eval): "
                                    f"k={n} is used for them")
            k = n
        advantages = ik.group_advantages(rewards, n, estimator=estimator, k=k, variant=args.passk_variant or "loo-1",
                                         eps=_TRL_GRPO_EPS if estimator == "grpo" else 1e-6, nan_policy="omit")
        advantages = advantages.to(device=device, dtype=torch.float32)
        if alpha is not None:
            self._ia_warn_if_truncation_stalls(advantages, n, estimator, k)
        logged = self._logs["advantages"]
        for _ in range(min(advantages.numel(), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        size = len(completion_ids_list)
        start = self.accelerator.process_index * size
        return advantages[start:start + size]

    def _ia_length_penalty(self, rewards, completion_ids_list, n: int, mode: str) -> torch.Tensor:
        """Arora & Zanette's rewards for every process's completions; logs what the estimator optimises."""
        args, device = self.args, rewards.device
        # TRL's truncation rule (completions/clipped_ratio, mask_truncated_completions): cut off unless the
        # last token is EOS or the pad token
        stops = set(self.eos_token_ids) | {self._tokenizer.pad_token_id}
        local = torch.tensor([[len(ids), float(len(ids) > 0 and ids[-1] in stops)] for ids in completion_ids_list],
                             dtype=torch.float32, device=device)
        lengths, ended = self.accelerator.gather(local).unbind(1)  # every process's completions, in order
        ended = ended > 0
        penalised = ik.length_penalized_rewards(rewards, lengths, n, alpha=args.length_penalty_alpha,
                                                threshold=args.correct_threshold, finished=ended)
        optimised = torch.where(torch.isnan(rewards), rewards, penalised.to(rewards.dtype))
        correct_cut = (rewards > args.correct_threshold) & ~ended
        self._ia_cut = (lengths, rewards, correct_cut)
        metrics = self._metrics[mode]
        metrics["reward_optimized"].append(torch.nanmean(optimised).item())
        metrics["reward_optimized_std"].append(nanstd(optimised).item())
        metrics["length_penalty/cut_off_ratio"].append((~ended).float().mean().item())
        metrics["length_penalty/correct_cut_off_ratio"].append(correct_cut.float().mean().item())
        return optimised

    def _ia_warn_if_truncation_stalls(self, advantages, n: int, estimator: str, k) -> None:
        """Warn once when every advantage is 0 only because correct completions were cut off."""
        lengths, rewards, correct_cut = self._ia_cut
        if bool((advantages != 0).any()) or not bool(correct_cut.any()):
            return
        args = self.args
        uncut = ik.length_penalized_rewards(rewards, lengths, n, alpha=args.length_penalty_alpha,
                                            threshold=args.correct_threshold)
        uncut = torch.where(torch.isnan(rewards), rewards, uncut.to(rewards.dtype))
        alternative = ik.group_advantages(uncut, n, estimator=estimator, k=k, variant=args.passk_variant or "loo-1",
                                          eps=_TRL_GRPO_EPS if estimator == "grpo" else 1e-6, nan_policy="omit")
        if not bool((alternative != 0).any()):
            return
        self._ia_warn("truncation_stall",
                      f"every completion of a step has advantage 0, so the policy does not move: "
                      f"{int(correct_cut.sum())} of {rewards.numel()} completions had reward > correct_threshold="
                      f"{args.correct_threshold} but were cut off at max_completion_length={self.max_completion_length} "
                      f"without EOS, and length_penalty_alpha (Arora & Zanette's rule) scores a cut-off completion as "
                      f"incorrect. Raise max_completion_length, or watch reward_optimized and "
                      f"length_penalty/cut_off_ratio (logged; `reward` is the reward before the penalty)")

    # ---- loss ------------------------------------------------------------------------------------

    def _ia_fallbacks(self, inputs) -> list[str]:
        """Settings of this call that the fused loss cannot express (FALLBACKS' keys)."""
        reasons = []
        if self.loss_type not in _TRL_LOSS_TYPES:
            reasons.append("loss_type")
        if self.top_entropy_quantile < 1.0:
            reasons.append("top_entropy_quantile")
        if self.off_policy_mask_threshold is not None:
            reasons.append("off_policy_mask_threshold")
        if getattr(self, "_entropy_bonus_enabled", False):
            reasons.append("entropy_coef")
        if getattr(self, "aux_loss_enabled", False):
            reasons.append("router_aux_loss_coef")
        if any(inputs.get(key) is not None for key in _MULTIMODAL_KEYS):
            reasons.append("multimodal inputs")
        _, head_reason = output_head(self._ia_base_model())
        if head_reason is not None:
            reasons.append(head_reason)
        return reasons

    def _compute_loss(self, model, inputs):
        if not self.args.fused_loss:
            return super()._compute_loss(model, inputs)
        reasons = self._ia_fallbacks(inputs)
        if reasons:
            for r in reasons:
                self._ia_warn(f"fallback:{r}", f"{r}: {FALLBACKS[r]}; this trainer uses TRL's loss")
            return super()._compute_loss(model, inputs)
        return self._ia_fused_loss(model, inputs)

    def _ia_fused_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        advantages = inputs["advantages"]  # [B] or [B, 1]: both accepted
        options = {}
        if self.use_vllm and self.vllm_importance_sampling_correction:
            # TRL multiplies each token's policy loss (not its KL term) by vLLM's importance ratio
            options["importance_weights"] = inputs["importance_sampling_ratio"].expand(mask.shape)
        old = inputs.get("old_per_token_logps")  # None: on-policy, old = logp.detach() from the same pass
        ref = inputs.get("ref_per_token_logps") if self.beta != 0.0 else None
        if self.beta != 0.0:
            options["kl_times_ratio"] = bool(self.args.use_bias_correction_kl)
        scale, softcap = _logit_transform(self._ia_base_model())
        if scale != 1.0 or softcap is not None:
            options.update(logit_scale=scale, softcap=softcap)
        # TRL's loss types are ia_kernels' aggregation presets (sequence means over all B sequences)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if self.loss_type == "dr_grpo":
            options["norm_length"] = self.max_completion_length
        if self.loss_type == "dapo":
            # the generation batch's token count, rescaled to one accumulation window as TRL does
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            options["num_tokens"] = normalizer
            accumulation = 1

        def loss_on(hidden, weight, bias):
            weight, bias = _full(weight, bias)
            hidden = hidden.to(weight.device)
            if hidden.dtype != weight.dtype and weight.dtype != torch.float32:
                hidden = hidden.to(weight.dtype)  # (bf16 states with an fp32 head, cast_lm_head_to_fp32, are taken as they are)
            with torch.autocast(hidden.device.type, enabled=False):
                loss, metrics = ik.linear_ppo_loss(
                    hidden, weight, completion_ids, old, advantages, mask, bias=bias, temperature=self.temperature,
                    ref_logp=ref, clip_low=self.epsilon_low, clip_high=self.epsilon_high, dual_clip=self.args.delta,
                    kl_coef=self.beta, kl_estimator="k3", aggregation=self.loss_type,
                    importance=self.importance_sampling_level, check_finite=False, **options)
                logp = None
                if old is not None:
                    # TRL's per-sequence clip metrics and ratio-weighted KL need the per-token log-probs,
                    # which linear_ppo_loss does not return: one no-grad pass over the head (2 N H V),
                    # off-policy steps only (on-policy, every ratio is 1).
                    with torch.no_grad():
                        logp = ik.linear_logprobs(hidden.detach(), weight.detach(), completion_ids,
                                                  bias=None if bias is None else bias.detach(),
                                                  temperature=self.temperature,
                                                  logit_scale=options.get("logit_scale"), softcap=options.get("softcap"))
            return loss, metrics, logp

        with self.accelerator.autocast():
            loss, metrics, logp = fused_head_loss(model, self._ia_base_model(), input_ids, attention_mask,
                                                  completion_ids.size(1), loss_on)
        self._ia_log_loss_metrics(mode, metrics, logp, old, ref, advantages, mask)
        return loss / accumulation

    def _ia_log_loss_metrics(self, mode, metrics, logp, old, ref, advantages, mask) -> None:
        """TRL 1.16's loss metrics, by TRL's definitions: token means over every process's tokens
        (sequence means for sequence-level values), per-sequence clip fractions' min / max over every
        process's sequences."""
        log = self._metrics[mode]
        mask = mask.to(torch.float32)
        count = mask.sum()
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
        sequence_level = self.importance_sampling_level == "sequence"

        def global_mean(x):
            if x.shape[1] == 1:  # one value per sequence
                local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
            else:
                local_sum, local_count = (x * mask).sum(), count
            totals = self.accelerator.reduce(torch.stack([local_sum, local_count.to(local_sum.dtype)]),
                                             reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        def token_mean_of(value):  # linear_ppo_loss' token mean over this rank's tokens -> global token mean
            totals = self.accelerator.reduce(torch.stack([value.detach().float() * count, count]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if logp is None:  # on-policy: the ratio is 1 everywhere
            log_ratio = torch.zeros(mask.shape[0], 1 if sequence_level else mask.shape[1], device=mask.device)
        else:
            log_ratio = logp - old
            if sequence_level:
                log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        coef = torch.exp(log_ratio)
        if self.beta != 0.0:
            if logp is None:  # the fused pass' k3 mean, ratio 1
                log["kl"].append(token_mean_of(metrics["kl_ref"]))
            else:
                d = ref - logp
                kl = torch.exp(d) - d - 1
                if self.args.use_bias_correction_kl:
                    kl = kl * coef
                log["kl"].append(global_mean(kl))
        if self.args.delta is not None:  # TRL clamps its ratio before the clip metrics
            coef = coef.clamp(max=self.args.delta)
        log["entropy"].append(token_mean_of(metrics["entropy_mean"]))
        low = ((coef < 1 - self.epsilon_low) & (adv < 0)).float()
        high = ((coef > 1 + self.epsilon_high) & (adv > 0)).float()
        log["clip_ratio/low_mean"].append(global_mean(low))
        log["clip_ratio/high_mean"].append(global_mean(high))
        log["clip_ratio/region_mean"].append(global_mean(torch.maximum(low, high)))

        def per_sequence(x):
            return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

        log["clip_ratio/low_min"].append(nanmin(self.accelerator.gather(per_sequence(low))).item())
        log["clip_ratio/high_max"].append(nanmax(self.accelerator.gather(per_sequence(high))).item())

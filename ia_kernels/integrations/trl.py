"""ia_kernels inside TRL's GRPOTrainer: one import, one config class.

    from ia_kernels.integrations.trl import IAGRPOConfig as GRPOConfig, IAGRPOTrainer as GRPOTrainer
    args = GRPOConfig(..., advantage_estimator="passk", k=4, length_penalty_alpha=0.1)

`IAGRPOConfig` is a `trl.GRPOConfig` with four more fields; `IAGRPOTrainer` is a `trl.GRPOTrainer`
that overrides two things and nothing else:

- the advantages: after TRL has generated and scored the completions, the rewards of every process
  (TRL gathers them) are combined as TRL combines them (weighted sum of the reward functions; a
  completion every function scored None is "no reward", NaN), optionally length-penalised
  (Arora & Zanette, on the completion lengths gathered from every process, since the group
  statistics need the whole group), and passed to `group_advantages(..., nan_policy="omit")`.
  Each process keeps its own slice, as TRL does.
- the loss: `linear_ppo_loss` on the policy's last hidden states and LM-head weight (no [N, V]
  logits), with TRL's loss type, clipping, temperature, masks, KL and gradient-accumulation scaling.
  Settings the fused loss cannot express fall back to TRL's own loss with a one-time warning naming
  them (`FALLBACKS`).

With the defaults (estimator "grpo", no length penalty, fused_loss=True) a training step equals
TRL's own step to fp32 precision (tests/integrations/test_trl.py).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

import ia_kernels as ik
from ia_kernels.core.numerics import ESTIMATORS_USING_K
from ia_kernels.ops.advantages import ESTIMATORS, PASSK_VARIANTS

__all__ = ["IAGRPOConfig", "IAGRPOTrainer", "FALLBACKS"]

# Settings the fused loss cannot express: the step runs TRL's own loss (warned once per setting).
FALLBACKS = {
    "loss_type": "cispo, sapo and vespo have no fused equivalent (grpo, bnpo, dr_grpo, dapo, luspo have)",
    "top_entropy_quantile": "< 1 masks tokens by the entropy of the current policy",
    "off_policy_mask_threshold": "the off-policy sequence mask needs the current log-probs before the loss",
    "entropy_coef": "TRL's entropy bonus (static or adaptive) is a token mean outside the loss type's aggregation",
    "router_aux_loss_coef": "MoE load-balancing loss (output_router_logits)",
    "multimodal inputs": "pixel values, image sizes or token type ids reach the model beside the text",
    "PEFT adapter on lm_head": "the LM head's effective weight is not one tensor",
}
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                    "token_type_ids", "mm_token_type_ids", "image_position_ids")
_TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_TRL_GRPO_EPS = 1e-4  # TRL divides by (std + 1e-4)


@dataclass
class IAGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the inference-aware settings.

    advantage_estimator: any `ia_kernels.group_advantages` estimator but "majority" (TRL has no
        answer ids): "grpo" (default: TRL's own group normalisation, eps 1e-4; scale_rewards="none"
        makes it dr_grpo), "dr_grpo", "rloo", "reinforce", "passk", "passk_chen".
    k: samples per objective evaluation for passk / passk_chen (<= num_generations). Evaluation
        groups smaller than k (num_generations_eval < k) use k = the group size.
    passk_variant: PKPO's baseline for passk ("loo-1", "loo", "s").
    length_penalty_alpha: None (off) or alpha in [0, 1]: Arora & Zanette's reward
        1 - alpha * sigmoid((len - mean) / std) for correct completions (reward > correct_threshold
        and ended by EOS; a truncated completion counts as incorrect), 0 otherwise, statistics over
        the correct completions of the same prompt. Completions with no reward stay NaN (advantage 0).
    correct_threshold: a completion is correct when its combined reward exceeds it (default 0.5).
    fused_loss: True (default): the loss is `linear_ppo_loss` on hidden states; False: TRL's loss.
    """

    advantage_estimator: str = field(default="grpo", metadata={"help": "ia_kernels.group_advantages estimator"})
    k: int | None = field(default=None, metadata={"help": "k of the pass@k objective (passk, passk_chen)"})
    passk_variant: str = field(default="loo-1", metadata={"help": "PKPO baseline: loo-1, loo or s"})
    length_penalty_alpha: float | None = field(default=None, metadata={"help": "Arora & Zanette's alpha; None: off"})
    correct_threshold: float = field(default=0.5, metadata={"help": "reward > threshold counts as correct"})
    fused_loss: bool = field(default=True, metadata={"help": "linear_ppo_loss on hidden states (no [N, V] logits)"})

    def __post_init__(self):
        super().__post_init__()
        est = self.advantage_estimator
        if est == "majority":
            raise ValueError("advantage_estimator='majority' needs answer ids, which TRL's reward functions do not "
                             "return; use it through ia_kernels.group_advantages directly")
        if est not in ESTIMATORS:
            raise ValueError(f"advantage_estimator must be one of {', '.join(e for e in ESTIMATORS if e != 'majority')}"
                             f"; got {est!r}")
        if est in ESTIMATORS_USING_K:
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"advantage_estimator={est!r} needs k, an int >= 1 (got k={self.k!r})")
            if self.k > self.num_generations:
                raise ValueError(f"k={self.k} is larger than num_generations={self.num_generations}: the pass@k "
                                 f"objective needs k samples per prompt")
        elif self.k is not None:
            raise ValueError(f"k is used by advantage_estimator 'passk' and 'passk_chen' only; got k={self.k} with "
                             f"advantage_estimator={est!r}")
        if self.passk_variant not in PASSK_VARIANTS:
            raise ValueError(f"passk_variant must be one of {', '.join(PASSK_VARIANTS)}; got {self.passk_variant!r}")
        a = self.length_penalty_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise ValueError(f"length_penalty_alpha must be None or a number in [0, 1]; got {a!r}")


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


def _install_hidden_forward(base) -> None:
    """`base(..., ia_kernels_hidden=True)` returns the backbone's last hidden states [B, L, H].

    Called through the trainer's (possibly DDP/FSDP/PEFT-wrapped) model, so every wrapper's forward
    hooks run as for TRL's own forward; without the flag the forward is unchanged (generation too).
    """
    if getattr(base, "_ia_kernels_hidden_forward", False):
        return
    previous = base.forward

    @functools.wraps(previous)
    def forward(*args, ia_kernels_hidden=False, **kwargs):
        if not ia_kernels_hidden:
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        return base.base_model(*args, **kwargs).last_hidden_state

    base.forward = forward
    base._ia_kernels_hidden_forward = True


class IAGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with ia_kernels' advantages and fused loss (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, IAGRPOConfig):
            raise ValueError("IAGRPOTrainer needs args=IAGRPOConfig(...) (a trl.GRPOConfig with the ia_kernels fields)")
        self._ia_warned: set = set()
        self._ia_scored = None
        _install_hidden_forward(self._ia_base_model())

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
        return output

    def _ia_advantages(self, rewards_per_func: torch.Tensor, completion_ids_list) -> torch.Tensor | None:
        args = self.args
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        estimator, alpha = args.advantage_estimator, args.length_penalty_alpha
        if self.multi_objective_aggregation != "sum_then_normalize":
            self._ia_warn("moa", f"multi_objective_aggregation={self.multi_objective_aggregation!r} normalises each "
                                 f"reward function before summing: TRL's advantages are kept")
            return None
        if estimator == "grpo":
            if self.scale_rewards == "batch":
                self._ia_warn("scale", "scale_rewards='batch' (batch std) is TRL's own estimator: TRL's "
                                       "advantages are kept")
                return None
            if self.scale_rewards == "none":
                estimator = "dr_grpo"
        device = rewards_per_func.device
        unscored = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[unscored] = torch.nan
        if alpha is not None:
            eos = set(self.eos_token_ids)
            local = torch.tensor([[len(ids), float(len(ids) > 0 and ids[-1] in eos)] for ids in completion_ids_list],
                                 dtype=torch.float32, device=device)
            lengths, ended = self.accelerator.gather(local).unbind(1)  # every process's completions, in order
            correct = (rewards > args.correct_threshold) & (ended > 0)
            penalised = ik.length_penalized_rewards(correct, lengths, n, alpha=alpha)
            rewards = torch.where(torch.isnan(rewards), rewards, penalised.to(rewards.dtype))
        k = args.k if estimator in ESTIMATORS_USING_K else None
        if k is not None and k > n:
            self._ia_warn("k_eval", f"groups of {n} completions are smaller than k={k} (num_generations_eval): "
                                    f"k={n} is used for them")
            k = n
        advantages = ik.group_advantages(rewards, n, estimator=estimator, k=k, variant=args.passk_variant,
                                         eps=_TRL_GRPO_EPS if estimator == "grpo" else 1e-6, nan_policy="omit")
        advantages = advantages.to(device=device, dtype=torch.float32)
        logged = self._logs["advantages"]
        for _ in range(min(advantages.numel(), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        size = len(completion_ids_list)
        start = self.accelerator.process_index * size
        return advantages[start:start + size]

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
        head = self._ia_base_model().get_output_embeddings()
        if hasattr(head, "base_layer") or hasattr(head, "modules_to_save"):
            reasons.append("PEFT adapter on lm_head")
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
        T = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        with self.accelerator.autocast():
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, ia_kernels_hidden=True)
        hidden = hidden[:, -T - 1:-1]  # the state before each completion token predicts it
        head = self._ia_base_model().get_output_embeddings()
        weight, bias = head.weight, head.bias
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # pragma: no cover - torch without DTensor
            DTensor = ()
        # FSDP2: each rank holds other sequences, so the head is gathered whole (as TRL does), never
        # passed as a vocabulary-sharded tensor-parallel weight.
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
        if isinstance(bias, DTensor):
            bias = bias.full_tensor()
        hidden = hidden.to(weight.device)
        if hidden.dtype != weight.dtype and weight.dtype != torch.float32:
            hidden = hidden.to(weight.dtype)  # (bf16 states with an fp32 head, cast_lm_head_to_fp32, are taken as they are)

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
        with torch.autocast(hidden.device.type, enabled=False):
            loss, metrics = ik.linear_ppo_loss(
                hidden, weight, completion_ids, old, advantages, mask, bias=bias, temperature=self.temperature,
                ref_logp=ref, clip_low=self.epsilon_low, clip_high=self.epsilon_high, dual_clip=self.args.delta,
                kl_coef=self.beta, kl_estimator="k3", aggregation=self.loss_type,
                importance=self.importance_sampling_level, check_finite=False, **options)
        loss = loss / accumulation

        def log(name, value):
            self._metrics[mode][name].append(self.accelerator.gather(value.detach().reshape(1)).nanmean().item())

        log("entropy", metrics["entropy_mean"])
        if self.beta != 0.0 and "kl_ref" in metrics:
            log("kl", metrics["kl_ref"])
        log("clip_ratio/low_mean", metrics["clip_frac_low"])
        log("clip_ratio/high_mean", metrics["clip_frac_high"])
        log("clip_ratio/region_mean", metrics["clip_frac_low"] + metrics["clip_frac_high"])
        return loss

"""Use ia_kernels from the RL frameworks users already train with.

- `ia_kernels.integrations.trl`: `IAGRPOConfig` / `IAGRPOTrainer`, drop-in for TRL's `GRPOConfig` /
  `GRPOTrainer` (k-sample estimators, Arora & Zanette's length penalty, the fused PPO loss).
- `ia_kernels.integrations.verl`: loaded by verl itself through the `verl.plugins` entry point;
  registers our advantage estimators and policy loss in verl's registries and the `ia_kernels`
  fused log-prob backend. `python -m ia_kernels.integrations.verl_check` says whether verl
  registered it, and why not.

Neither module is imported here: each imports its framework.
"""

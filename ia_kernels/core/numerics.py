"""The numeric constants and rules every backend follows, in one place.

The C++ kernels hold their own copies (csrc/include/ia/*.h: C++ cannot import Python); the compiled
module exports them and tests/test_numerics_constants.py checks that both sides agree, codes of
the enums included.
"""

from __future__ import annotations

import torch

# |log ratio| and |l_ref - l| in the k3 KL estimator are clamped to this before exp (as verl does),
# so that exp stays finite; beyond it the term is constant with zero gradient. ia::kPpoMaxLogRatio.
MAX_LOG_RATIO = 20.0

# exp(x - m) underflows to 0 in fp32 below -104, so shifted logits are floored here: a -inf logit (a
# banned token) then adds 0, not 0 * -inf = NaN, to a row's entropy and gradient. NaN passes
# through the floor. ia::kShiftedLogitFloor.
SHIFTED_LOGIT_FLOOR = -1e4

# PPO's KL estimators and their codes in ia::KlEstimator.
KL_ESTIMATOR_CODES = {"k1": 1, "k2": 2, "k3": 3}

# group_advantages's estimators and passk's variants, with their codes in ia::adv::Estimator and
# ia::adv::PassKVariant; the estimators that take a k.
ESTIMATOR_CODES = {"reinforce": 0, "rloo": 1, "grpo": 2, "dr_grpo": 3, "passk": 4, "passk_chen": 5, "majority": 6}
PASSK_VARIANT_CODES = {"s": 0, "loo": 1, "loo-1": 2, "centred": 3}
ESTIMATORS_USING_K = ("passk", "passk_chen", "majority")
# The answer id of a sample without a final answer: it abstains from majority votes (it casts no
# vote), in group_advantages(estimator="majority") and maj_at_k alike.
NO_ANSWER = -1

# ia::adv::InputError: what a reward failed (the kernels report the first offending sample).
REWARD_NON_FINITE, REWARD_OUTSIDE_UNIT, REWARD_NOT_BINARY = 1, 2, 3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in: float64 inputs stay float64; everything else (fp32, bf16,
    fp16) computes in fp32 (logits, log-sum-exp, entropy, the loss, advantages)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_compute(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A constant input as the kernels read it: detached, in the compute dtype, contiguous (None stays None)."""
    return None if x is None else x.detach().to(dtype).contiguous()


FP32 = (torch.float32,)
FP32_FP64 = (torch.float32, torch.float64)

// Per-token maths of the clipped PPO loss, shared by the CPU and CUDA kernels.
// ia_kernels/kernels/triton/ppo.py mirrors these functions (Triton cannot include C++), and
// ia_kernels/kernels/torch/ppo.py has the vectorised PyTorch form; the float64 reference in
// ia_kernels/reference/ppo.py defines them all.
//
// For one valid token with log-prob l, behaviour log-prob l_old, advantage a, reference log-prob
// l_ref and entropy h, the token's loss is
//   L = surrogate(r, a) + kl_coef * kl(l, l_ref) - entropy_coef * h
//   r = exp(clamp(l - l_old, -20, 20))                           (token-level importance)
//   surrogate(r, a) = max(-a r, -a clamp(r, 1 - clip_low, 1 + clip_high)),
//                     then min(that, -a c) when a < 0 and a dual clip c > 1 is set
//   k1 = l - l_ref,  k2 = (l - l_ref)^2 / 2,  k3 = exp(d) - d - 1 with d = clamp(l_ref - l, -20, 20)
//   with kl_times_ratio the KL term is kl_coef * kl * r (TRL's use_bias_correction_kl), r differentiable
// The clamps (as verl's) keep exp finite; beyond them the term is constant, with zero gradient.
// Every clamp and max lets NaN through (ia::clamp_keep_nan): a NaN log-prob or advantage gives a NaN
// loss, as in the PyTorch backend, never a finite one.
// The batch loss is sum over tokens of w * L, w the aggregation weight (0 for masked tokens), so
// dloss/dl = w * dL/dl and dloss/dh = -w * entropy_coef are known as soon as l and h are.
#pragma once

#include "ia/common.h"

namespace ia {

enum KlEstimator : int { kKlK1 = 1, kKlK2 = 2, kKlK3 = 3 };

// The bound on |log ratio| and on |l_ref - l| in k3.
constexpr float kPpoMaxLogRatio = 20.f;

struct PpoParams {
  float clip_low;      // the ratio is clipped below at 1 - clip_low
  float clip_high;     // ... and above at 1 + clip_high
  float dual_clip;     // c > 1 bounds the loss of negative advantages at -a c; 0 disables it
  float kl_coef;       // weight of the KL penalty (0: no penalty, l_ref is not read)
  int kl_estimator;    // a KlEstimator
  float entropy_coef;  // weight of the entropy bonus (0: h is not read)
  int kl_times_ratio;  // nonzero: the KL term is multiplied by the importance ratio
};

// The surrogate's value and its derivative with respect to the ratio r.
struct Surrogate {
  float loss;
  float dloss_dratio;
};

IA_HOST_DEVICE Surrogate clipped_surrogate(float ratio, float adv, const PpoParams& p) {
  const float lo = 1.f - p.clip_low;
  const float hi = 1.f + p.clip_high;
  const float clipped = clamp_keep_nan(ratio, lo, hi);
  Surrogate s;
  s.loss = max_keep_nan(-adv * ratio, -adv * clipped);
  // The clipped branch wins, and is flat, exactly when the ratio left the trust region in the
  // direction the advantage pushes it.
  const bool clip_active = (adv > 0.f && ratio > hi) || (adv < 0.f && ratio < lo);
  s.dloss_dratio = clip_active ? 0.f : -adv;
  if (p.dual_clip > 0.f && adv < 0.f) {
    const float bound = -adv * p.dual_clip;
    if (s.loss > bound) {
      s.loss = bound;
      s.dloss_dratio = 0.f;
    }
  }
  return s;
}

// A KL estimate between the policy and the reference at one sampled token, and d/dl of it.
struct KlTerm {
  float value;
  float dvalue_dlogp;
};

IA_HOST_DEVICE KlTerm kl_penalty(float logp, float ref_logp, int estimator) {
  KlTerm k;
  const float d = ref_logp - logp;
  if (estimator == kKlK1) {
    k.value = -d;
    k.dvalue_dlogp = 1.f;
  } else if (estimator == kKlK2) {
    k.value = 0.5f * d * d;
    k.dvalue_dlogp = -d;
  } else {
    const float dc = clamp_keep_nan(d, -kPpoMaxLogRatio, kPpoMaxLogRatio);
    const float e = expf(dc);
    k.value = e - dc - 1.f;
    k.dvalue_dlogp = (d > kPpoMaxLogRatio || d < -kPpoMaxLogRatio) ? 0.f : 1.f - e;
  }
  return k;
}

// exp of a log ratio clamped to +-kPpoMaxLogRatio, and its derivative with respect to the log ratio.
struct Ratio {
  float value;
  float dvalue_dlog;
};

IA_HOST_DEVICE Ratio ratio_from_log(float log_ratio) {
  Ratio r;
  const float c = clamp_keep_nan(log_ratio, -kPpoMaxLogRatio, kPpoMaxLogRatio);
  r.value = expf(c);
  r.dvalue_dlog = (log_ratio > kPpoMaxLogRatio || log_ratio < -kPpoMaxLogRatio) ? 0.f : r.value;
  return r;
}

// The loss of one valid token and the weighted gradients of the batch loss.
struct PpoToken {
  float loss;       // L (unweighted)
  float g_logp;     // w * dL/dl
  float g_entropy;  // w * dL/dh
  float ratio;      // the importance ratio used
};

// The terms of L other than the surrogate: the KL penalty and the entropy bonus. With
// kl_times_ratio, the KL term is kl * ratio: its value and d/dl at fixed ratio are scaled here, and
// the caller adds kl_coef * kl to the loss's slope in the ratio (returned in dloss_dratio_extra).
IA_HOST_DEVICE PpoToken ppo_regularisers(float logp, float ref_logp, float entropy, float weight,
                                         const PpoParams& p, float ratio, float* dloss_dratio_extra) {
  PpoToken t;
  t.loss = 0.f;
  t.g_logp = 0.f;
  t.g_entropy = 0.f;
  t.ratio = 1.f;
  *dloss_dratio_extra = 0.f;
  if (p.kl_coef != 0.f) {
    const KlTerm k = kl_penalty(logp, ref_logp, p.kl_estimator);
    const float scale = p.kl_times_ratio ? ratio : 1.f;
    t.loss += p.kl_coef * k.value * scale;
    t.g_logp += weight * p.kl_coef * k.dvalue_dlogp * scale;
    if (p.kl_times_ratio) *dloss_dratio_extra = p.kl_coef * k.value;
  }
  if (p.entropy_coef != 0.f) {
    t.loss -= p.entropy_coef * entropy;
    t.g_entropy = -weight * p.entropy_coef;
  }
  return t;
}

// Token-level importance: everything about one token is local to it.
IA_HOST_DEVICE PpoToken ppo_token(float logp, float old_logp, float adv, float ref_logp,
                                  float entropy, float weight, const PpoParams& p) {
  const Ratio r = ratio_from_log(logp - old_logp);
  float kl_slope = 0.f;
  PpoToken t = ppo_regularisers(logp, ref_logp, entropy, weight, p, r.value, &kl_slope);
  const Surrogate s = clipped_surrogate(r.value, adv, p);
  t.loss += s.loss;
  t.g_logp += weight * (s.dloss_dratio + kl_slope) * r.dvalue_dlog;
  t.ratio = r.value;
  return t;
}

}  // namespace ia

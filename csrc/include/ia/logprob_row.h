// Per-row maths of the log-prob row pass, shared by the CPU and CUDA kernels.
//
// For one row of logits z[0..V) and temperature T, with x = z / T:
//   lse      = log sum_j exp(x_j) = m + log s,   m = max_j x_j, s = sum_j exp(x_j - m)
//   logp     = (x_t - m) - log s                 (t: the row's target; not x_t - lse, which loses
//                                                 the log-prob to the rounding of lse once |m| is
//                                                 large: at |m| = 1e3 in fp32, up to 6e-5)
//   entropy  = lse - sum_j p_j x_j = log(s) - sum_j p_j (x_j - m) ,  p_j = exp(x_j - lse)
// computed around the row maximum m so that large logits lose nothing to cancellation.
//
// Gradient with respect to z for upstream gradients g (of logp) and ge (of entropy):
//   dlogp/dx_j    = [j == t] - p_j
//   dentropy/dx_j = -p_j (log p_j + entropy)
//   dz_j = (g ([j == t] - p_j) - ge p_j (x_j - lse + entropy)) / T
//
// Guarantees on every backend: logp <= 0 and entropy >= 0 (exactly, not just up to rounding); a
// -inf logit is a token of probability 0; a row holding NaN or +inf, or only -inf, gives NaN
// outputs and a NaN gradient row; a target outside [0, V) that is not ignore_index gives NaN
// (the kernels never index with it: callers validate targets, this is the second line).
#pragma once

#include "ia/common.h"

namespace ia {

struct RowStats {
  float logp;
  float lse;
  float entropy;
};

// Combines the row maximum m (of x), s = sum exp(x - m) and w = sum exp(x - m) (x - m).
IA_HOST_DEVICE RowStats finish_row_stats(float m, float s, float w, float x_target) {
  RowStats out;
  float log_s = logf(s);
  out.lse = m + log_s;
  // With x_target and m rounded the same way, x_target <= m and s >= 1, so logp <= 0; the bounds
  // make that hold however a compiler contracts the arithmetic (NaN passes through).
  out.logp = min_keep_nan((x_target - m) - log_s, 0.f);
  out.entropy = max_keep_nan(log_s - w / s, 0.f);
  return out;
}

// The logits gradient of one element (see the header comment).
IA_HOST_DEVICE float logit_grad(float x, bool is_target, float lse, float entropy, float g,
                                float ge, float inv_temp) {
  float log_p = floor_shifted(x - lse);
  float p = exp_approx(log_p);
  float d = g * ((is_target ? 1.0f : 0.0f) - p) - ge * p * (log_p + entropy);
  return d * inv_temp;
}

}  // namespace ia

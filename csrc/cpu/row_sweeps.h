// The CPU sweeps over one row of fp32 logits, shared by the log-prob and PPO row passes
// (csrc/cpu/logprobs.cpp, csrc/cpu/ppo.cpp). The per-element maths is in ia/logprob_row.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ia/logprob_row.h"

namespace ia {
namespace cpu {

// Statistics of one row: max, then sum exp and sum exp * (x - m) in a second sweep over the row,
// which is still in L2 (V=152k fp32 is 600 kB).
inline RowStats row_stats(const float* z, int64_t V, int64_t target, float inv_temp) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = std::max(m, z[j] * inv_temp);
  float s = 0.f, w = 0.f;
#pragma omp simd reduction(+ : s, w)
  for (int64_t j = 0; j < V; ++j) {
    float d = z[j] * inv_temp - m;
    float e = exp_approx(d);
    s += e;
    w += e * d;
  }
  return finish_row_stats(m, s, w, z[target] * inv_temp);
}

// Overwrites a row of logits with the gradient of g * logp + ge * entropy (target < 0: no logp
// term). Rows with g == ge == 0 are zeroed without the exp sweep.
inline void write_row_grad(float* row, int64_t V, int64_t target, float lse, float entropy,
                           float g, float ge, float inv_temp) {
  if (g == 0.f && ge == 0.f) {
    std::fill(row, row + V, 0.f);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) {
    row[j] = logit_grad(row[j] * inv_temp, false, lse, entropy, g, ge, inv_temp);
  }
  if (target >= 0) row[target] += g * inv_temp;  // the [j == t] term, kept out of the SIMD loop
}

}  // namespace cpu
}  // namespace ia

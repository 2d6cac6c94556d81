// The CPU sweeps over one row of fp32 logits, shared by the log-prob and PPO row passes
// (csrc/cpu/logprobs.cpp, csrc/cpu/ppo.cpp). The per-element maths is in ia/logprob_row.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ia/logprob_row.h"
#include "simd.h"

namespace ia {
namespace cpu {

// Statistics of one row: max, then sum exp and sum exp * (x - m) in a second sweep over the row,
// which is still in L2 (V=152k fp32 is 600 kB).
inline RowStats row_stats(const float* z, int64_t V, int64_t target, float inv_temp) {
  const float m = row_max(z, V, inv_temp);
  float s, w;
  row_sum_exp(z, V, inv_temp, m, &s, &w);
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
  row_write_grad(row, V, lse, entropy, g, ge, inv_temp);
  if (target >= 0) row[target] += g * inv_temp;  // the [j == t] term, kept out of the SIMD loop
}

}  // namespace cpu
}  // namespace ia

// Eight-lane float vectors (GCC/Clang vector extensions) for the CPU row sweeps.
//
// GCC does not auto-vectorise the exp-sum loops (the scalar exp's clamps and float->int conversion
// defeat if-conversion), so the sweeps are written with explicit vectors. With -march=x86-64-v3
// they compile to AVX2/FMA; on other targets the compiler splits them into the widest vectors it has.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__FMA__)
#include <immintrin.h>
#endif

#include "ia/logprob_row.h"

namespace ia {
namespace cpu {

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

inline f8 splat(float v) { return f8{v, v, v, v, v, v, v, v}; }

// a * b + c. The module is built with -ffp-contract=off (the row statistics must round x = z / T
// the same way in every sweep, see ia/logprob_row.h), so the polynomial asks for its FMAs here.
inline f8 fma8(f8 a, f8 b, f8 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// max(d, kShiftedLogitFloor) per lane, NaN kept (see ia::floor_shifted).
inline f8 floor_shifted8(f8 d) {
  const f8 lo = splat(kShiftedLogitFloor);
  return d < lo ? lo : d;
}

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }

inline float hmax(f8 v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

inline float hsum(f8 v) {
  // Pairwise, so the result does not depend on how a row splits into vectors and tail.
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// Eight lanes of ia::exp_approx (same range reduction and polynomial, same error).
inline f8 exp8(f8 x) {
  const f8 lo = splat(-87.3f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const f8 round = splat(12582912.0f);
  f8 n = fma8(x, splat(1.44269504088896341f), round) - round;
  f8 r = fma8(n, splat(-0.693359375f), x);
  r = fma8(n, splat(2.12194440e-4f), r);
  f8 p = splat(1.9875691500e-4f);
  p = fma8(p, r, splat(1.3981999507e-3f));
  p = fma8(p, r, splat(8.3334519073e-3f));
  p = fma8(p, r, splat(4.1665795894e-2f));
  p = fma8(p, r, splat(1.6666665459e-1f));
  p = fma8(p, r, splat(5.0000001201e-1f));
  p = fma8(p * r, r, r) + splat(1.0f);
  i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  f8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// max_j z[j] * inv_temp
inline float row_max(const float* z, int64_t V, float inv_temp) {
  f8 m8 = splat(-std::numeric_limits<float>::infinity());
  const f8 it = splat(inv_temp);
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) {
    f8 x = load8(z + j) * it;
    m8 = x > m8 ? x : m8;
  }
  float m = hmax(m8);
  for (; j < V; ++j) {
    float x = z[j] * inv_temp;
    m = x > m ? x : m;
  }
  return m;
}

// s = sum exp(x - m), w = sum exp(x - m) (x - m), x = z * inv_temp
inline void row_sum_exp(const float* z, int64_t V, float inv_temp, float m, float* s_out, float* w_out) {
  const f8 it = splat(inv_temp), m8 = splat(m);
  f8 s8 = splat(0.f), w8 = splat(0.f);
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) {
    f8 d = floor_shifted8(load8(z + j) * it - m8);
    f8 e = exp8(d);
    s8 += e;
    w8 += e * d;
  }
  float s = hsum(s8), w = hsum(w8);
  for (; j < V; ++j) {
    float d = floor_shifted(z[j] * inv_temp - m);
    float e = exp_approx(d);
    s += e;
    w += e * d;
  }
  *s_out = s;
  *w_out = w;
}

// row[j] <- (g ([j == t] - p_j) - ge p_j (log p_j + H)) / T with log p_j = x_j - lse; the [j == t]
// term is added by the caller. Same maths as ia::logit_grad, eight lanes at a time.
inline void row_write_grad(float* row, int64_t V, float lse, float entropy, float g, float ge, float inv_temp) {
  const f8 it = splat(inv_temp), lse8 = splat(lse), ent8 = splat(entropy), g8 = splat(g), ge8 = splat(ge);
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) {
    f8 log_p = floor_shifted8(load8(row + j) * it - lse8);
    f8 p = exp8(log_p);
    store8(row + j, (-(g8 * p) - ge8 * p * (log_p + ent8)) * it);
  }
  for (; j < V; ++j) row[j] = logit_grad(row[j] * inv_temp, false, lse, entropy, g, ge, inv_temp);
}

}  // namespace cpu
}  // namespace ia

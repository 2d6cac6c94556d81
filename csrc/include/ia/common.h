// Shared by the CPU (OpenMP) and CUDA kernels: qualifiers and small numeric helpers.
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define IA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IA_HOST_DEVICE inline
#endif

namespace ia {

// Comparisons that let NaN through, unlike fminf/fmaxf (which return the other operand): a NaN
// input must reach the outputs on every backend, never be clamped into a plausible value.
IA_HOST_DEVICE float clamp_keep_nan(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
// NaN if either operand is NaN.
IA_HOST_DEVICE float max_keep_nan(float a, float b) { return (a != a || a > b) ? a : b; }
IA_HOST_DEVICE float min_keep_nan(float a, float b) { return (a != a || a < b) ? a : b; }

// exp(x - m) underflows to 0 in fp32 below -104, so shifted logits below this floor add nothing to
// a row's sums; flooring them keeps a -inf logit (a banned token) from turning 0 * -inf into NaN
// in the entropy and its gradient. NaN passes through the floor.
constexpr float kShiftedLogitFloor = -1e4f;
IA_HOST_DEVICE float floor_shifted(float d) { return d < kShiftedLogitFloor ? kShiftedLogitFloor : d; }

// exp(x) for float, branch-free so that loops over a row vectorise (glibc's expf does not).
// Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for exp(r):
// relative error below 2 ulp on [-87, 88]; below -87.3 it returns 0 and -inf gives 0.
IA_HOST_DEVICE float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  // The GPU's expf is already branch-free and accurate (2 ulp): the CUDA module is built without
  // --use_fast_math (CMakeLists.txt), which would turn it into the approximate __expf.
  return expf(x);
#else
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  // Plain comparisons, not fminf/fmaxf: those keep NaN semantics that stop GCC from inlining them
  // into SIMD loops (a NaN input still propagates: both comparisons are false).
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = round(x / ln2) by the 1.5 * 2^23 trick: floorf would be a library call in SIMD loops
  // unless the whole build gave up trapping-math semantics.
  const float kRound = 12582912.0f;
  float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n by building the exponent bits; n is in [-126, 127] after the clamp above.
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  static_assert(sizeof(scale) == sizeof(bits), "float is 32-bit");
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

}  // namespace ia

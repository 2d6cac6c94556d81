// CPU kernel of paged attention: new query tokens attend over a KV cache kept in fixed-size blocks
// (the layout of flash-attention's paged cache: [num_blocks, block_size, kv_heads, head_dim] per
// layer, a block table per row), for a rollout engine's decode steps and chunked prefills.
//
// Row b owns queries q[cu_q[b] .. cu_q[b+1]) (token-major [T, heads, head_dim]); they are the last
// q_len = cu_q[b+1] - cu_q[b] of its seqlens[b] tokens, whose keys and values are already in the
// cache. Query i of row b sits at position p = seqlens[b] - q_len + i and attends causally to the
// keys at positions 0 .. p. Position t lives in block block_table[b, t / block_size], slot
// t % block_size.
//
// One work item per (query token, kv head): it reads each visible key and value once for the
// heads / kv_heads query heads that share them (grouped-query attention), a block at a time: the
// block's scores, one rescale of the running sums by the new maximum (online softmax), then the
// value sum. fp32 throughout; the scores' exp is the row passes' eight-lane exp8 (simd.h, relative
// error ~1e-7). Every output element is written by exactly one thread, so results do not depend on
// the thread count.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "simd.h"

namespace py = pybind11;

namespace {

using ia::cpu::f8;
using ia::cpu::load8;
using ia::cpu::splat;
using ia::cpu::store8;

inline float dot(const float* a, const float* b, int64_t d) {
  f8 acc = splat(0.f);
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) acc = ia::cpu::fma8(load8(a + j), load8(b + j), acc);
  float s = ia::cpu::hsum(acc);
  for (; j < d; ++j) s += a[j] * b[j];
  return s;
}

// s[j] <- exp(s[j] - m) for j < n (eight lanes at a time: ia::cpu::exp8, the row passes' exp), and
// their sum. A score of -inf (from an -inf key) gives 0; NaN stays NaN.
inline float exp_shifted(float* s, int64_t n, float m) {
  const f8 m8 = splat(m);
  f8 sum8 = splat(0.f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    f8 e = ia::cpu::exp8(load8(s + j) - m8);
    store8(s + j, e);
    sum8 += e;
  }
  float sum = ia::cpu::hsum(sum8);
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - m);
    sum += s[j];
  }
  return sum;
}

// acc = acc * alpha + p * v
inline void scale_add(float* acc, float alpha, float p, const float* v, int64_t d) {
  const f8 a8 = splat(alpha), p8 = splat(p);
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) store8(acc + j, ia::cpu::fma8(p8, load8(v + j), load8(acc + j) * a8));
  for (; j < d; ++j) acc[j] = acc[j] * alpha + p * v[j];
}

void paged_attention(std::uintptr_t q_ptr, std::uintptr_t k_ptr, std::uintptr_t v_ptr, std::uintptr_t table_ptr,
                     std::uintptr_t seqlens_ptr, std::uintptr_t cu_q_ptr, std::uintptr_t out_ptr, int64_t rows,
                     int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                     int64_t max_blocks, double scale_d) {
  const float* q = reinterpret_cast<const float*>(q_ptr);
  const float* kc = reinterpret_cast<const float*>(k_ptr);
  const float* vc = reinterpret_cast<const float*>(v_ptr);
  const int32_t* table = reinterpret_cast<const int32_t*>(table_ptr);
  const int64_t* seqlens = reinterpret_cast<const int64_t*>(seqlens_ptr);
  const int64_t* cu_q = reinterpret_cast<const int64_t*>(cu_q_ptr);
  float* out = reinterpret_cast<float*>(out_ptr);
  const float scale = static_cast<float>(scale_d);
  const int64_t group = heads / kv_heads;
  const int64_t token_stride = kv_heads * head_dim;        // one key (all kv heads) in a block
  const int64_t block_stride = block_size * token_stride;  // one block
  // the row of each query token (cu_q is sorted)
  std::vector<int64_t> row_of(static_cast<size_t>(tokens));
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t t = cu_q[b]; t < cu_q[b + 1]; ++t) row_of[t] = b;

  py::gil_scoped_release no_gil;
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(group * block_size));
    std::vector<float> acc(static_cast<size_t>(group * head_dim));
    std::vector<float> m(static_cast<size_t>(group)), l(static_cast<size_t>(group));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < tokens * kv_heads; ++item) {
      const int64_t t = item / kv_heads, kvh = item % kv_heads;
      const int64_t b = row_of[t];
      const int64_t q_len = cu_q[b + 1] - cu_q[b];
      const int64_t visible = seqlens[b] - q_len + (t - cu_q[b]) + 1;  // keys 0 .. position
      const float* qt = q + (t * heads + kvh * group) * head_dim;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      for (int64_t start = 0; start < visible; start += block_size) {
        const int64_t n = std::min(block_size, visible - start);
        const int64_t block = table[b * max_blocks + start / block_size];
        const float* kb = kc + block * block_stride + kvh * head_dim;
        const float* vb = vc + block * block_stride + kvh * head_dim;
        for (int64_t g = 0; g < group; ++g) {
          float* s = scores.data() + g * block_size;
          float block_max = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < n; ++j) {
            s[j] = scale * dot(qt + g * head_dim, kb + j * token_stride, head_dim);
            block_max = std::max(block_max, s[j]);
          }
          const float m_new = std::max(m[g], block_max);
          const float alpha = std::exp(m[g] - m_new);  // 0 on the first block (m = -inf)
          float sum = exp_shifted(s, n, m_new);       // s[j] <- exp(s[j] - m_new), and their sum
          float* a = acc.data() + g * head_dim;
          scale_add(a, alpha, s[0], vb, head_dim);
          for (int64_t j = 1; j < n; ++j) scale_add(a, 1.f, s[j], vb + j * token_stride, head_dim);
          m[g] = m_new;
          l[g] = l[g] * alpha + sum;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* o = out + (t * heads + kvh * group + g) * head_dim;
        const float inv = 1.f / l[g];
        for (int64_t j = 0; j < head_dim; ++j) o[j] = acc[g * head_dim + j] * inv;
      }
    }
  }
}

}  // namespace

void bind_paged_attention(py::module_& m) {
  m.def("paged_attention", &paged_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("block_table"), py::arg("seqlens"), py::arg("cu_seqlens_q"), py::arg("out"), py::arg("rows"),
        py::arg("tokens"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("block_size"),
        py::arg("max_blocks"), py::arg("scale"),
        "Causal attention of packed query tokens over a paged fp32 KV cache (see csrc/cpu/paged_attention.cpp).");
}

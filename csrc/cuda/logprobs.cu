// CUDA row pass of the fused linear log-prob op: one block per row of fp32 logits.
// Same maths as the CPU kernel (csrc/include/ia/logprob_row.h); the GEMMs are cuBLAS via torch.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ia/cuda_launchers.h"
#include "ia/logprob_row.h"
#include "reduce.cuh"

namespace {

constexpr int kThreads = 512;

__global__ void logprob_rows_forward_kernel(const float* __restrict__ z, int64_t row_stride,
                                            int64_t V, const int64_t* __restrict__ targets,
                                            float inv_temp, int64_t ignore_index,
                                            float* __restrict__ logp, float* __restrict__ lse,
                                            float* __restrict__ entropy) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* zr = z + row * row_stride;
  float m = -INFINITY;
  // __fmul_rn: x = z / T rounded once, the same in every sweep (no contraction into an FMA), so
  // that logp <= 0 holds exactly (see ia/logprob_row.h).
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, __fmul_rn(zr[j], inv_temp));
  m = ia::cuda::block_reduce(m, ia::cuda::MaxOp(), scratch);
  float s = 0.f, w = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float d = ia::floor_shifted(__fsub_rn(__fmul_rn(zr[j], inv_temp), m));
    float e = expf(d);
    s += e;
    w += e * d;
  }
  s = ia::cuda::block_reduce(s, ia::cuda::SumOp(), scratch);
  w = ia::cuda::block_reduce(w, ia::cuda::SumOp(), scratch);
  if (threadIdx.x == 0) {
    const int64_t t = targets[row];
    const bool ignored = t == ignore_index;
    const bool in_range = t >= 0 && t < V;  // never read outside the row; NaN flags a bad target
    ia::RowStats r = ia::finish_row_stats(m, s, w, in_range ? __fmul_rn(zr[t], inv_temp) : 0.f);
    logp[row] = ignored ? 0.f : (in_range ? r.logp : NAN);
    lse[row] = r.lse;
    entropy[row] = r.entropy;
  }
}

__global__ void logprob_rows_backward_kernel(float* __restrict__ z, int64_t row_stride, int64_t V,
                                             const int64_t* __restrict__ targets, float inv_temp,
                                             int64_t ignore_index, const float* __restrict__ lse,
                                             const float* __restrict__ entropy,
                                             const float* __restrict__ g_logp,
                                             const float* __restrict__ g_entropy) {
  const int64_t row = blockIdx.x;
  float* zr = z + row * row_stride;
  const int64_t t = targets[row];
  const bool ignored = t == ignore_index;
  if (!ignored && (t < 0 || t >= V)) {  // a bad target: a NaN gradient row, nothing outside it
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) zr[j] = NAN;
    return;
  }
  const float g = g_logp[row];  // an ignored row keeps -g p_j, only its target term is dropped
  const float ge = g_entropy ? g_entropy[row] : 0.f;
  const float lse_r = lse[row], ent_r = entropy[row];
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    zr[j] = ia::logit_grad(__fmul_rn(zr[j], inv_temp), !ignored && j == t, lse_r, ent_r, g, ge, inv_temp);
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

void logprob_rows_forward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                               std::uintptr_t targets, double temperature, int64_t ignore_index,
                               std::uintptr_t logp, std::uintptr_t lse, std::uintptr_t entropy,
                               std::uintptr_t stream) {
  if (n_rows == 0) return;
  logprob_rows_forward_kernel<<<static_cast<unsigned>(n_rows), kThreads, 0,
                                reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float*>(logits), row_stride, V,
      reinterpret_cast<const int64_t*>(targets), static_cast<float>(1.0 / temperature),
      ignore_index, reinterpret_cast<float*>(logp), reinterpret_cast<float*>(lse),
      reinterpret_cast<float*>(entropy));
  check(cudaGetLastError(), "logprob_rows_forward_cuda");
}

void logprob_rows_backward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                                std::uintptr_t targets, double temperature, int64_t ignore_index,
                                std::uintptr_t lse, std::uintptr_t entropy, std::uintptr_t g_logp,
                                std::uintptr_t g_entropy, std::uintptr_t stream) {
  if (n_rows == 0) return;
  logprob_rows_backward_kernel<<<static_cast<unsigned>(n_rows), kThreads, 0,
                                 reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(logits), row_stride, V, reinterpret_cast<const int64_t*>(targets),
      static_cast<float>(1.0 / temperature), ignore_index, reinterpret_cast<const float*>(lse),
      reinterpret_cast<const float*>(entropy), reinterpret_cast<const float*>(g_logp),
      reinterpret_cast<const float*>(g_entropy));
  check(cudaGetLastError(), "logprob_rows_backward_cuda");
}

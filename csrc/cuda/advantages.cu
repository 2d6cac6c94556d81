// CUDA kernels of the group-advantage op family: one warp per group, the maths in
// csrc/include/ia/advantages.h (the same functions the CPU kernels call).
//
// The lanes of a warp check the group's rewards (read through the permutation when groups come as
// ids). The affine estimators (reinforce, rloo, grpo, dr_grpo, passk_chen) then reduce the group's
// statistics across the warp and write every output in parallel. passk and majority gather the
// group into a global scratch slice as double, lane 0 runs the sequential maths (O(n log n): a
// sort and a few linear sweeps), and the lanes scatter the results. Groups are independent and
// every sample is written once: no atomics except the error report (a min).
// Plain launcher functions here; their Python bindings are in advantages_bind.cpp.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ia/advantages.h"
#include "ia/cuda_launchers.h"

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

struct GroupLayout {
  int64_t n_groups;
  int64_t group_size;
  const int64_t* offsets;  // [n_groups + 1] or null (fixed size)
  const int64_t* order;    // [n] or null (identity)

  __device__ int64_t begin(int64_t g) const { return offsets ? offsets[g] : g * group_size; }
  __device__ int64_t size(int64_t g) const { return offsets ? offsets[g + 1] - offsets[g] : group_size; }
  __device__ int64_t sample(int64_t pos) const { return order ? order[pos] : pos; }
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Checks the group's rewards (lanes in parallel); returns false for the whole warp if any is bad,
// after recording the first offending sample.
template <typename T>
__device__ bool check_group(int estimator, const T* rewards, const GroupLayout& lay, int64_t begin, int n, int lane,
                            long long* first_error) {
  bool bad = false;
  for (int j = lane; j < n; j += 32) {
    const int64_t src = lay.sample(begin + j);
    const int code = ia::adv::check_reward(estimator, static_cast<double>(rewards[src]));
    if (code != ia::adv::kOk) {
      atomicMin(first_error, static_cast<long long>(src * 4 + code));
      bad = true;
    }
  }
  return !__any_sync(kFullMask, bad);
}

template <typename T>
__global__ void group_advantages_kernel(int estimator, int variant, const T* __restrict__ rewards,
                                        const int64_t* __restrict__ answers, T* __restrict__ out,
                                        GroupLayout lay, double* __restrict__ scratch,
                                        int* __restrict__ idx_scratch, int64_t* __restrict__ ans_scratch,
                                        int k, double eps, long long* __restrict__ first_error) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (g >= lay.n_groups) return;  // uniform across the warp
  const int64_t begin = lay.begin(g);
  const int n = static_cast<int>(lay.size(g));
  if (!check_group(estimator, rewards, lay, begin, n, lane, first_error)) return;

  if (ia::adv::is_affine(estimator)) {
    // Group statistics by warp reductions, then every lane applies the affine formula.
    double sum = 0.0;
    for (int j = lane; j < n; j += 32) sum += static_cast<double>(rewards[lay.sample(begin + j)]);
    sum = warp_sum(sum);
    double ss = 0.0;
    if (ia::adv::needs_squares(estimator)) {
      const double mean = sum / n;
      for (int j = lane; j < n; j += 32) {
        const double d = static_cast<double>(rewards[lay.sample(begin + j)]) - mean;
        ss += d * d;
      }
      ss = warp_sum(ss);
    }
    const ia::adv::Affine f = ia::adv::affine_estimator(estimator, n, sum, ss, k, eps);
    for (int j = lane; j < n; j += 32) {
      const int64_t src = lay.sample(begin + j);
      out[src] = static_cast<T>(f.scale * static_cast<double>(rewards[src]) + f.offset);
    }
    return;
  }

  // passk and majority: gather into the group's scratch slice (six arrays of n: r, a, g, then
  // majority's counts or passk's three weight tables), lane 0 runs the sequential maths.
  double* buf = scratch + 6 * begin;
  ia::adv::GroupScratch s{buf, buf + n, buf + 2 * n, buf + 3 * n, idx_scratch + begin,
                          answers ? ans_scratch + begin : nullptr};
  ia::adv::PassKTables tables{buf + 3 * n, buf + 4 * n, buf + 5 * n};
  for (int j = lane; j < n; j += 32) {
    const int64_t src = lay.sample(begin + j);
    s.r[j] = static_cast<double>(rewards[src]);
    if (answers) ans_scratch[begin + j] = answers[src];
  }
  __syncwarp();
  if (lane == 0) {
    if (estimator == ia::adv::kPassK) ia::adv::fill_passk_tables(tables, n, k, variant);
    ia::adv::group_advantages(s, tables, estimator, variant, n, k, eps);
  }
  __syncwarp();
  for (int j = lane; j < n; j += 32) out[lay.sample(begin + j)] = static_cast<T>(s.a[j]);
}

template <typename T>
__global__ void length_penalized_kernel(const unsigned char* __restrict__ correct,
                                        const double* __restrict__ lengths, T* __restrict__ out,
                                        GroupLayout lay, double* __restrict__ scratch,
                                        unsigned char* __restrict__ flag_scratch, double alpha) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (g >= lay.n_groups) return;
  const int64_t begin = lay.begin(g);
  const int n = static_cast<int>(lay.size(g));
  double* len = scratch + 2 * begin;
  double* res = len + n;
  unsigned char* ok = flag_scratch + begin;
  for (int j = lane; j < n; j += 32) {
    const int64_t src = lay.sample(begin + j);
    ok[j] = correct[src] != 0;
    len[j] = lengths[src];
  }
  __syncwarp();
  if (lane == 0) ia::adv::length_penalized(ok, len, res, n, alpha);
  __syncwarp();
  for (int j = lane; j < n; j += 32) out[lay.sample(begin + j)] = static_cast<T>(res[j]);
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

unsigned blocks_for(int64_t n_groups) {
  return static_cast<unsigned>((n_groups + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

// scratch: 6 n float64 and idx_scratch: n int32 (passk and majority only, else null),
// ans_scratch: n int64 (majority only) on the device;
// first_error: one int64 set to INT64_MAX by the caller; on return (after a sync) it holds
// 4 * sample + code of the first offending sample, or INT64_MAX.
void group_advantages_cuda(int estimator, int variant, bool is_double, std::uintptr_t rewards,
                           std::uintptr_t answers, std::uintptr_t out, int64_t n_groups, int64_t group_size,
                           std::uintptr_t offsets, std::uintptr_t order, std::uintptr_t scratch,
                           std::uintptr_t idx_scratch, std::uintptr_t ans_scratch, int64_t k, double eps,
                           std::uintptr_t first_error, std::uintptr_t stream) {
  if (n_groups == 0) return;
  const GroupLayout lay{n_groups, group_size, reinterpret_cast<const int64_t*>(offsets),
                        reinterpret_cast<const int64_t*>(order)};
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  const auto* ans = reinterpret_cast<const int64_t*>(answers);
  auto* buf = reinterpret_cast<double*>(scratch);
  auto* idx = reinterpret_cast<int*>(idx_scratch);
  auto* ans_buf = reinterpret_cast<int64_t*>(ans_scratch);
  auto* err = reinterpret_cast<long long*>(first_error);
  if (is_double) {
    group_advantages_kernel<double><<<blocks_for(n_groups), 32 * kWarpsPerBlock, 0, st>>>(
        estimator, variant, reinterpret_cast<const double*>(rewards), ans, reinterpret_cast<double*>(out), lay,
        buf, idx, ans_buf, static_cast<int>(k), eps, err);
  } else {
    group_advantages_kernel<float><<<blocks_for(n_groups), 32 * kWarpsPerBlock, 0, st>>>(
        estimator, variant, reinterpret_cast<const float*>(rewards), ans, reinterpret_cast<float*>(out), lay,
        buf, idx, ans_buf, static_cast<int>(k), eps, err);
  }
  check(cudaGetLastError(), "group_advantages_cuda");
}

// scratch: 2 n float64, flag_scratch: n uint8 on the device.
void length_penalized_rewards_cuda(std::uintptr_t correct, std::uintptr_t lengths, std::uintptr_t out,
                                   bool is_double, int64_t n_groups, int64_t group_size, std::uintptr_t offsets,
                                   std::uintptr_t order, std::uintptr_t scratch, std::uintptr_t flag_scratch,
                                   double alpha, std::uintptr_t stream) {
  if (n_groups == 0) return;
  const GroupLayout lay{n_groups, group_size, reinterpret_cast<const int64_t*>(offsets),
                        reinterpret_cast<const int64_t*>(order)};
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  const auto* c = reinterpret_cast<const unsigned char*>(correct);
  const auto* len = reinterpret_cast<const double*>(lengths);
  auto* buf = reinterpret_cast<double*>(scratch);
  auto* flags = reinterpret_cast<unsigned char*>(flag_scratch);
  if (is_double) {
    length_penalized_kernel<double><<<blocks_for(n_groups), 32 * kWarpsPerBlock, 0, st>>>(
        c, len, reinterpret_cast<double*>(out), lay, buf, flags, alpha);
  } else {
    length_penalized_kernel<float><<<blocks_for(n_groups), 32 * kWarpsPerBlock, 0, st>>>(
        c, len, reinterpret_cast<float*>(out), lay, buf, flags, alpha);
  }
  check(cudaGetLastError(), "length_penalized_rewards_cuda");
}

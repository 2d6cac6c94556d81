// The CUDA launchers of ia_kernels._cuda, declared once: the .cu files that define them and the
// binding files that expose them both include this header, so a change of argument order or type
// fails to compile instead of passing pointers in the wrong places. Every pointer is a raw device
// address (an integer from Python, validated there); `stream` is the caller's cudaStream_t.
#pragma once

#include <cstdint>

// csrc/cuda/logprobs.cu: the log-prob row pass over a chunk of fp32 logits [n_rows, V].
void logprob_rows_forward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                               std::uintptr_t targets, double temperature, int64_t ignore_index,
                               std::uintptr_t logp, std::uintptr_t lse, std::uintptr_t entropy,
                               std::uintptr_t stream);
void logprob_rows_backward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                                std::uintptr_t targets, double temperature, int64_t ignore_index,
                                std::uintptr_t lse, std::uintptr_t entropy, std::uintptr_t g_logp,
                                std::uintptr_t g_entropy, std::uintptr_t stream);

// csrc/cuda/advantages.cu: one warp per group.
void group_advantages_cuda(int estimator, int variant, bool is_double, std::uintptr_t rewards,
                           std::uintptr_t answers, std::uintptr_t out, int64_t n_groups, int64_t group_size,
                           std::uintptr_t offsets, std::uintptr_t order, std::uintptr_t scratch,
                           std::uintptr_t idx_scratch, std::uintptr_t ans_scratch, int64_t k, double eps,
                           std::uintptr_t first_error, std::uintptr_t stream);
void length_penalized_rewards_cuda(std::uintptr_t correct, std::uintptr_t lengths, std::uintptr_t out,
                                   bool is_double, int64_t n_groups, int64_t group_size, std::uintptr_t offsets,
                                   std::uintptr_t order, std::uintptr_t scratch, std::uintptr_t flag_scratch,
                                   double alpha, std::uintptr_t stream);

// Python bindings of the CUDA group-advantage kernels (csrc/cuda/advantages.cu).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace py = pybind11;

void group_advantages_cuda(int estimator, int variant, bool is_double, std::uintptr_t rewards,
                           std::uintptr_t answers, std::uintptr_t out, int64_t n_groups, int64_t group_size,
                           std::uintptr_t offsets, std::uintptr_t order, std::uintptr_t scratch,
                           std::uintptr_t idx_scratch, std::uintptr_t ans_scratch, int64_t k, double eps,
                           std::uintptr_t first_error, std::uintptr_t stream);
void length_penalized_rewards_cuda(std::uintptr_t correct, std::uintptr_t lengths, std::uintptr_t out,
                                   bool is_double, int64_t n_groups, int64_t group_size, std::uintptr_t offsets,
                                   std::uintptr_t order, std::uintptr_t scratch, std::uintptr_t flag_scratch,
                                   double alpha, std::uintptr_t stream);

void bind_advantages_cuda(py::module_& m) {
  m.def("group_advantages", &group_advantages_cuda,
        "Per-group advantages, one warp per group (raw device pointers, caller's stream)");
  m.def("length_penalized_rewards", &length_penalized_rewards_cuda,
        "Arora & Zanette length-penalised rewards, one warp per group (raw device pointers)");
}

// The ia_kernels._cuda module: CUDA kernels, launched on the caller's stream (passed as an integer).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace py = pybind11;

// csrc/cuda/logprobs.cu
void logprob_rows_forward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                               std::uintptr_t targets, double temperature, int64_t ignore_index,
                               std::uintptr_t logp, std::uintptr_t lse, std::uintptr_t entropy,
                               std::uintptr_t stream);
void logprob_rows_backward_cuda(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                                std::uintptr_t targets, double temperature, int64_t ignore_index,
                                std::uintptr_t lse, std::uintptr_t entropy, std::uintptr_t g_logp,
                                std::uintptr_t g_entropy, std::uintptr_t stream);

void bind_advantages_cuda(py::module_& m);  // csrc/cuda/advantages.cu

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ia_kernels native CUDA kernels";
  m.def("logprob_rows_forward", &logprob_rows_forward_cuda);
  m.def("logprob_rows_backward", &logprob_rows_backward_cuda);
  bind_advantages_cuda(m);
}

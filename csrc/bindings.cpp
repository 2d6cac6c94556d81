// The ia_kernels._C module: CPU kernels, one registration function per op family.
// Each function takes raw data pointers (as integers), shapes and strides from a Python wrapper
// that has already validated dtypes, devices and contiguity.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_logprobs(py::module_& m);    // csrc/cpu/logprobs.cpp
void bind_advantages(py::module_& m);  // csrc/cpu/advantages.cpp
void bind_ppo(py::module_& m);         // csrc/cpu/ppo.cpp
void bind_paged_attention(py::module_& m);  // csrc/cpu/paged_attention.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "ia_kernels native CPU kernels";
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  bind_logprobs(m);
  bind_advantages(m);
  bind_ppo(m);
  bind_paged_attention(m);
}

// The ia_kernels._cuda module: CUDA kernels, launched on the caller's stream (passed as an integer).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ia/cuda_launchers.h"

namespace py = pybind11;

void bind_advantages_cuda(py::module_& m);  // csrc/cuda/advantages.cu

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ia_kernels native CUDA kernels";
  // Named arguments: the Python callers pass them by keyword, so pybind11 checks every name.
  m.def("logprob_rows_forward", &logprob_rows_forward_cuda, py::arg("logits"), py::arg("row_stride"),
        py::arg("n_rows"), py::arg("V"), py::arg("targets"), py::arg("temperature"), py::arg("ignore_index"),
        py::arg("logp"), py::arg("lse"), py::arg("entropy"), py::arg("stream"));
  m.def("logprob_rows_backward", &logprob_rows_backward_cuda, py::arg("logits"), py::arg("row_stride"),
        py::arg("n_rows"), py::arg("V"), py::arg("targets"), py::arg("temperature"), py::arg("ignore_index"),
        py::arg("lse"), py::arg("entropy"), py::arg("g_logp"), py::arg("g_entropy"), py::arg("stream"));
  bind_advantages_cuda(m);
}

// Python bindings of the CUDA group-advantage kernels (csrc/cuda/advantages.cu).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_advantages_cuda(py::module_& m) { (void)m; }

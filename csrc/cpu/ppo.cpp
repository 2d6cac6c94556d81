// CPU kernels of the ppo op family (to be filled in).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_ppo(py::module_& m) { (void)m; }

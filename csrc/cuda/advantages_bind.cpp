// Python bindings of the CUDA group-advantage kernels (csrc/cuda/advantages.cu).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ia/cuda_launchers.h"

namespace py = pybind11;

void bind_advantages_cuda(py::module_& m) {
  m.def("group_advantages", &group_advantages_cuda,
        "Per-group advantages, one warp per group (raw device pointers, caller's stream)",
        py::arg("estimator"), py::arg("variant"), py::arg("is_double"), py::arg("rewards"), py::arg("answers"),
        py::arg("out"), py::arg("n_groups"), py::arg("group_size"), py::arg("offsets"), py::arg("order"),
        py::arg("scratch"), py::arg("idx_scratch"), py::arg("ans_scratch"), py::arg("k"), py::arg("eps"),
        py::arg("first_error"), py::arg("stream"));
  m.def("length_penalized_rewards", &length_penalized_rewards_cuda,
        "Arora & Zanette length-penalised rewards, one warp per group (raw device pointers)",
        py::arg("correct"), py::arg("lengths"), py::arg("out"), py::arg("is_double"), py::arg("n_groups"),
        py::arg("group_size"), py::arg("offsets"), py::arg("order"), py::arg("scratch"), py::arg("flag_scratch"),
        py::arg("alpha"), py::arg("stream"));
}

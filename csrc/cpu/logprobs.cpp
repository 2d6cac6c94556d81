// CPU row pass of the fused linear log-prob op: one OpenMP sweep per chunk of logits.
//
// The logits of a chunk of tokens come from a BLAS GEMM done by the Python launcher; these kernels
// turn each fp32 row into (logp, lse, entropy) and, in backward, overwrite the row with its
// gradient, so a chunk of logits is the only [rows, V] buffer that ever exists.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "row_sweeps.h"

namespace py = pybind11;

namespace {

float* as_f32(std::uintptr_t p) { return reinterpret_cast<float*>(p); }
const int64_t* as_i64(std::uintptr_t p) { return reinterpret_cast<const int64_t*>(p); }

void logprob_rows_forward(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                          std::uintptr_t targets, double temperature, int64_t ignore_index,
                          std::uintptr_t logp_out, std::uintptr_t lse_out,
                          std::uintptr_t entropy_out) {
  const float* z = as_f32(logits);
  const int64_t* t = as_i64(targets);
  float* logp = as_f32(logp_out);
  float* lse = as_f32(lse_out);
  float* ent = as_f32(entropy_out);
  const float inv_temp = static_cast<float>(1.0 / temperature);
  py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n_rows; ++i) {
    const bool ignored = t[i] == ignore_index;
    const bool in_range = t[i] >= 0 && t[i] < V;
    // Ignored rows still get their lse and entropy (cheap, and useful for metrics); logp is 0.
    // A target outside the row is never read: its logp is NaN (the wrappers reject such targets
    // before any kernel runs; this is the second line).
    ia::RowStats r = ia::cpu::row_stats(z + i * row_stride, V, in_range ? t[i] : 0, inv_temp);
    logp[i] = ignored ? 0.f : (in_range ? r.logp : std::numeric_limits<float>::quiet_NaN());
    lse[i] = r.lse;
    ent[i] = r.entropy;
  }
}

// Overwrites each row of logits with d(loss)/d(logits): g_logp[i] * dlogp_i + g_entropy[i] *
// dentropy_i. g_entropy may be 0 (null) when the entropy was not used. An ignored row has no target
// term: its row is -g p - ge p (log p + H) (zero when the caller passes g = ge = 0).
void logprob_rows_backward(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                           std::uintptr_t targets, double temperature, int64_t ignore_index,
                           std::uintptr_t lse_in, std::uintptr_t entropy_in,
                           std::uintptr_t g_logp, std::uintptr_t g_entropy) {
  float* z = as_f32(logits);
  const int64_t* t = as_i64(targets);
  const float* lse = as_f32(lse_in);
  const float* ent = as_f32(entropy_in);
  const float* g = as_f32(g_logp);
  const float* ge = g_entropy ? as_f32(g_entropy) : nullptr;
  const float inv_temp = static_cast<float>(1.0 / temperature);
  py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n_rows; ++i) {
    float* row = z + i * row_stride;
    const bool ignored = t[i] == ignore_index;
    if (!ignored && (t[i] < 0 || t[i] >= V)) {  // never written outside the row: a NaN row instead
      std::fill(row, row + V, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    // An ignored row has no target term ([j == t]) but keeps g's -p_j term: a vocabulary shard
    // whose rows' targets live on another shard passes them as ignored (ops/logprobs.py zeroes g
    // for rows that get no gradient at all).
    const float gei = ge ? ge[i] : 0.f;
    ia::cpu::write_row_grad(row, V, ignored ? -1 : t[i], lse[i], ent[i], g[i], gei, inv_temp);
  }
}

}  // namespace

void bind_logprobs(py::module_& m) {
  // Named arguments: the Python callers pass them by keyword, so pybind11 checks every name.
  m.def("logprob_rows_forward", &logprob_rows_forward,
        "Per-row logp, log-sum-exp and entropy of fp32 logits (raw pointers)", py::arg("logits"),
        py::arg("row_stride"), py::arg("n_rows"), py::arg("V"), py::arg("targets"), py::arg("temperature"),
        py::arg("ignore_index"), py::arg("logp"), py::arg("lse"), py::arg("entropy"));
  m.def("logprob_rows_backward", &logprob_rows_backward,
        "Overwrite fp32 logits with the gradient of g_logp*logp + g_entropy*entropy", py::arg("logits"),
        py::arg("row_stride"), py::arg("n_rows"), py::arg("V"), py::arg("targets"), py::arg("temperature"),
        py::arg("ignore_index"), py::arg("lse"), py::arg("entropy"), py::arg("g_logp"), py::arg("g_entropy"));
}

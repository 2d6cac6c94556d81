// CPU kernels of the PPO loss: per-token loss terms and their gradients, and the fused row pass of
// the linear PPO loss (logits chunk -> log-prob, entropy, loss terms, logits gradient in place).
//
// The per-token maths is in ia/ppo.h. Aggregation is folded into a per-sequence weight computed by
// the Python wrapper (token w = seq_scale[b] on valid tokens, 0 elsewhere), so every gradient is
// final when a kernel writes it and the autograd backward only multiplies by grad_output.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ia/ppo.h"
#include "row_sweeps.h"

namespace py = pybind11;

namespace {

float* as_f32(std::uintptr_t p) { return reinterpret_cast<float*>(p); }
const float* as_cf32(std::uintptr_t p) { return reinterpret_cast<const float*>(p); }
const int64_t* as_i64(std::uintptr_t p) { return reinterpret_cast<const int64_t*>(p); }
const uint8_t* as_u8(std::uintptr_t p) { return reinterpret_cast<const uint8_t*>(p); }

ia::PpoParams make_params(double clip_low, double clip_high, double dual_clip, double kl_coef,
                          int64_t kl_estimator, double entropy_coef, bool kl_times_ratio) {
  ia::PpoParams p;
  p.clip_low = static_cast<float>(clip_low);
  p.clip_high = static_cast<float>(clip_high);
  p.dual_clip = static_cast<float>(dual_clip);
  p.kl_coef = static_cast<float>(kl_coef);
  p.kl_estimator = static_cast<int>(kl_estimator);
  p.entropy_coef = static_cast<float>(entropy_coef);
  p.kl_times_ratio = kl_times_ratio ? 1 : 0;
  return p;
}

// Per-token terms over [B, T] (contiguous fp32; advantages through strides so that [B] broadcasts
// with stride_t = 0). Writes, for every token, the unweighted loss L, w * dL/dlogp, w * dL/dentropy
// and the importance ratio; masked tokens get 0, 0, 0, 1 and none of their inputs is read, so
// padding may hold anything (NaN included).
//
// Sequence-level importance (GSPO): one ratio per sequence, s = exp(mean of valid l - l_old); each
// token's surrogate uses s, and dloss/dl_t = (s / n) * sum_u w dsurrogate_u/ds for every valid t
// (n valid tokens): a per-sequence reduction, hence the second sweep.
void ppo_terms(int64_t B, int64_t T, std::uintptr_t logp_in, std::uintptr_t old_logp_in,
               std::uintptr_t ref_logp_in, std::uintptr_t entropy_in, std::uintptr_t adv_in,
               int64_t adv_stride_b, int64_t adv_stride_t, std::uintptr_t mask_in,
               std::uintptr_t seq_scale_in, double clip_low, double clip_high, double dual_clip,
               double kl_coef, int64_t kl_estimator, double entropy_coef, bool kl_times_ratio,
               bool sequence_level, std::uintptr_t loss_out, std::uintptr_t g_logp_out,
               std::uintptr_t g_entropy_out, std::uintptr_t ratio_out) {
  const ia::PpoParams p =
      make_params(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, kl_times_ratio);
  const float* logp = as_cf32(logp_in);
  const float* old_logp = as_cf32(old_logp_in);
  const float* ref = ref_logp_in ? as_cf32(ref_logp_in) : nullptr;
  const float* ent = entropy_in ? as_cf32(entropy_in) : nullptr;
  const float* adv = as_cf32(adv_in);
  const uint8_t* mask = as_u8(mask_in);
  const float* seq_scale = as_cf32(seq_scale_in);
  float* loss = as_f32(loss_out);
  float* g_logp = as_f32(g_logp_out);
  float* g_ent = as_f32(g_entropy_out);
  float* ratio = as_f32(ratio_out);
  py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const float w = seq_scale[b];
    float seq_log_ratio = 0.f;
    int64_t n_valid = 0;
    if (sequence_level) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = b * T + t;
        if (mask[i]) {
          seq_log_ratio += logp[i] - old_logp[i];
          ++n_valid;
        }
      }
      seq_log_ratio /= static_cast<float>(std::max<int64_t>(n_valid, 1));
    }
    const ia::Ratio seq_ratio = ia::ratio_from_log(seq_log_ratio);
    float dloss_dseq_ratio = 0.f;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      if (!mask[i]) {
        loss[i] = 0.f;
        g_logp[i] = 0.f;
        g_ent[i] = 0.f;
        ratio[i] = 1.f;
        continue;
      }
      const float a = adv[b * adv_stride_b + t * adv_stride_t];
      const float r = ref ? ref[i] : 0.f;
      const float h = ent ? ent[i] : 0.f;
      ia::PpoToken tok;
      if (sequence_level) {
        float kl_slope = 0.f;
        tok = ia::ppo_regularisers(logp[i], r, h, w, p, seq_ratio.value, &kl_slope);
        const ia::Surrogate s = ia::clipped_surrogate(seq_ratio.value, a, p);
        tok.loss += s.loss;
        tok.ratio = seq_ratio.value;
        dloss_dseq_ratio += w * (s.dloss_dratio + kl_slope);
      } else {
        tok = ia::ppo_token(logp[i], old_logp[i], a, r, h, w, p);
      }
      loss[i] = tok.loss;
      g_logp[i] = tok.g_logp;
      g_ent[i] = tok.g_entropy;
      ratio[i] = tok.ratio;
    }
    if (sequence_level && n_valid > 0) {
      const float g_shared = dloss_dseq_ratio * seq_ratio.dvalue_dlog / static_cast<float>(n_valid);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = b * T + t;
        if (mask[i]) g_logp[i] += g_shared;
      }
    }
  }
}

// The fused row pass of the linear PPO loss (token-level importance): for each row of a chunk of
// fp32 logits, the row statistics give l and h, ia::ppo_token gives L and the gradients of the
// batch loss with respect to l and h, and the row is overwritten with the logits gradient. Rows
// whose target is ignore_index are masked: their outputs are 0 (ratio 1) and their gradient row 0.
void ppo_rows_fused(std::uintptr_t logits, int64_t row_stride, int64_t n_rows, int64_t V,
                    std::uintptr_t targets, double temperature, int64_t ignore_index,
                    std::uintptr_t old_logp_in, std::uintptr_t adv_in, std::uintptr_t ref_logp_in,
                    std::uintptr_t weight_in, double clip_low, double clip_high, double dual_clip,
                    double kl_coef, int64_t kl_estimator, double entropy_coef, bool kl_times_ratio,
                    std::uintptr_t logp_out, std::uintptr_t entropy_out, std::uintptr_t loss_out,
                    std::uintptr_t ratio_out) {
  const ia::PpoParams p =
      make_params(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, kl_times_ratio);
  float* z = as_f32(logits);
  const int64_t* tgt = as_i64(targets);
  const float* old_logp = old_logp_in ? as_cf32(old_logp_in) : nullptr;  // null: on-policy
  const float* adv = as_cf32(adv_in);
  const float* ref = ref_logp_in ? as_cf32(ref_logp_in) : nullptr;
  const float* weight = as_cf32(weight_in);
  float* logp = as_f32(logp_out);
  float* ent = as_f32(entropy_out);
  float* loss = as_f32(loss_out);
  float* ratio = as_f32(ratio_out);
  const float inv_temp = static_cast<float>(1.0 / temperature);
  py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n_rows; ++i) {
    float* row = z + i * row_stride;
    const int64_t t = tgt[i];
    if (t == ignore_index) {
      std::fill(row, row + V, 0.f);
      logp[i] = ent[i] = loss[i] = 0.f;
      ratio[i] = 1.f;
      continue;
    }
    if (t < 0 || t >= V) {  // never read or written outside the row: NaN outputs and gradient
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::fill(row, row + V, nan);
      logp[i] = ent[i] = loss[i] = ratio[i] = nan;
      continue;
    }
    const ia::RowStats st = ia::cpu::row_stats(row, V, t, inv_temp);
    // On-policy (no old log-probs): the ratio is exp(0) = 1 and its slope 1, from this same pass.
    const ia::PpoToken tok = ia::ppo_token(st.logp, old_logp ? old_logp[i] : st.logp, adv[i],
                                           ref ? ref[i] : 0.f, st.entropy, weight[i], p);
    logp[i] = st.logp;
    ent[i] = st.entropy;
    loss[i] = tok.loss;
    ratio[i] = tok.ratio;
    ia::cpu::write_row_grad(row, V, t, st.lse, st.entropy, tok.g_logp, tok.g_entropy, inv_temp);
  }
}

}  // namespace

void bind_ppo(py::module_& m) {
  // The constants ia_kernels/core/numerics.py mirrors (checked by tests/test_numerics_constants.py).
  py::dict kl;
  kl["k1"] = static_cast<int>(ia::kKlK1);
  kl["k2"] = static_cast<int>(ia::kKlK2);
  kl["k3"] = static_cast<int>(ia::kKlK3);
  m.attr("KL_ESTIMATOR_CODES") = kl;
  m.attr("MAX_LOG_RATIO") = static_cast<double>(ia::kPpoMaxLogRatio);
  m.attr("SHIFTED_LOGIT_FLOOR") = static_cast<double>(ia::kShiftedLogitFloor);
  // Named arguments: the Python callers pass them by keyword, so pybind11 checks every name.
  m.def("ppo_terms", &ppo_terms,
        "Per-token PPO loss terms, w*dL/dlogp, w*dL/dentropy and ratios over [B, T] (raw pointers)",
        py::arg("B"), py::arg("T"), py::arg("logp"), py::arg("old_logp"), py::arg("ref_logp"), py::arg("entropy"),
        py::arg("adv"), py::arg("adv_stride_b"), py::arg("adv_stride_t"), py::arg("mask"), py::arg("seq_scale"),
        py::arg("clip_low"), py::arg("clip_high"), py::arg("dual_clip"), py::arg("kl_coef"), py::arg("kl_estimator"),
        py::arg("entropy_coef"), py::arg("kl_times_ratio"), py::arg("sequence_level"), py::arg("loss"), py::arg("g_logp"),
        py::arg("g_entropy"), py::arg("ratio"));
  m.def("ppo_rows_fused", &ppo_rows_fused,
        "Fused linear-PPO row pass: logp, entropy, loss terms; logits overwritten with their gradient",
        py::arg("logits"), py::arg("row_stride"), py::arg("n_rows"), py::arg("V"), py::arg("targets"),
        py::arg("temperature"), py::arg("ignore_index"), py::arg("old_logp"), py::arg("adv"), py::arg("ref_logp"),
        py::arg("weight"), py::arg("clip_low"), py::arg("clip_high"), py::arg("dual_clip"), py::arg("kl_coef"),
        py::arg("kl_estimator"), py::arg("entropy_coef"), py::arg("kl_times_ratio"), py::arg("logp"),
        py::arg("entropy"), py::arg("loss"), py::arg("ratio"));
}

// CPU kernels of the group-advantage op family: OpenMP over groups, the maths in
// csrc/include/ia/advantages.h.
//
// Groups come either as a fixed size (sample i belongs to group i / group_size) or as CSR offsets
// over a permutation: group g holds samples order[offsets[g] .. offsets[g+1]). The Python launcher
// builds both with one stable sort of the group ids, so groups may come in any order and size.
// Each thread gathers a group into double scratch, checks it, computes, and scatters the result;
// every sample is written exactly once, so results do not depend on the thread count.
// Groups are handed out in chunks of ~tens of microseconds of work (dynamic schedule): on a busy
// machine a descheduled thread then holds up one chunk, not half of the batch.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "ia/advantages.h"

namespace py = pybind11;

namespace {

struct GroupLayout {
  int64_t n_groups;
  int64_t group_size;     // used when offsets is null
  const int64_t* offsets;  // [n_groups + 1] or null
  const int64_t* order;    // [n] or null (identity)

  int64_t begin(int64_t g) const { return offsets ? offsets[g] : g * group_size; }
  int64_t size(int64_t g) const { return offsets ? offsets[g + 1] - offsets[g] : group_size; }
  int64_t sample(int64_t pos) const { return order ? order[pos] : pos; }
};

GroupLayout layout_of(int64_t n_groups, int64_t group_size, std::uintptr_t offsets, std::uintptr_t order) {
  return {n_groups, group_size, reinterpret_cast<const int64_t*>(offsets), reinterpret_cast<const int64_t*>(order)};
}

// Groups per scheduling chunk: ~20-50 us of work for groups of 8-16 samples.
constexpr int64_t kAffineChunk = 4096;
constexpr int64_t kScratchChunk = 512;

// Packs (sample index, error code) so that the smallest index wins a min-reduction.
int64_t pack_error(int64_t index, int code) { return index * 4 + code; }

template <typename T, bool kOrdered>
std::pair<int, int64_t> group_advantages_impl(int estimator, int variant, const T* rewards, const int64_t* answers,
                                              T* out, GroupLayout lay, int64_t max_n, int k, double eps) {
  int64_t first_error = std::numeric_limits<int64_t>::max();
  {
    py::gil_scoped_release no_gil;
#pragma omp parallel reduction(min : first_error)
    {
      const size_t cap = static_cast<size_t>(max_n);
      std::vector<double> buf(4 * cap), tab(3 * cap);
      std::vector<int> idx(cap);
      std::vector<int64_t> ans(answers ? cap : 0);
      ia::adv::GroupScratch s{buf.data(), buf.data() + cap, buf.data() + 2 * cap, buf.data() + 3 * cap,
                              idx.data(), answers ? ans.data() : nullptr};
      // passk's weights depend on the group size only: refilled when it changes (never, for a
      // fixed size; rarely, since groups come sorted by id, not by size, but sizes repeat).
      ia::adv::PassKTables tables{tab.data(), tab.data() + cap, tab.data() + 2 * cap};
      int tables_n = -1;
#pragma omp for schedule(dynamic, kScratchChunk)
      for (int64_t g = 0; g < lay.n_groups; ++g) {
        const int64_t begin = lay.begin(g);
        const int n = static_cast<int>(lay.size(g));
        bool ok = true;
        for (int j = 0; j < n; ++j) {
          const int64_t src = kOrdered ? lay.order[begin + j] : begin + j;
          const double r = static_cast<double>(rewards[src]);
          const int code = ia::adv::check_reward(estimator, r);
          if (code != ia::adv::kOk) {
            first_error = std::min(first_error, pack_error(src, code));
            ok = false;
          }
          s.r[j] = r;
          if (answers) ans[j] = answers[src];
        }
        if (!ok) continue;
        if (estimator == ia::adv::kPassK && n != tables_n) {
          ia::adv::fill_passk_tables(tables, n, k, variant);
          tables_n = n;
        }
        ia::adv::group_advantages(s, tables, estimator, variant, n, k, eps);
        for (int j = 0; j < n; ++j) out[kOrdered ? lay.order[begin + j] : begin + j] = static_cast<T>(s.a[j]);
      }
    }
  }
  if (first_error == std::numeric_limits<int64_t>::max()) return {0, -1};
  return {static_cast<int>(first_error % 4), first_error / 4};
}

// The affine estimators (reinforce, rloo, grpo, dr_grpo, passk_chen) read each group straight
// from the input: one sweep for the checks and the sum (a second for grpo's squares), one for the
// outputs. No scratch: this is the path that matters for throughput on small groups.
template <typename T, bool kOrdered, int estimator>
int64_t affine_groups(const T* rewards, T* out, GroupLayout lay, int k, double eps) {
  int64_t first_error = std::numeric_limits<int64_t>::max();
  py::gil_scoped_release no_gil;
#pragma omp parallel for schedule(dynamic, kAffineChunk) reduction(min : first_error)
  for (int64_t g = 0; g < lay.n_groups; ++g) {
    const int64_t begin = lay.begin(g);
    const int n = static_cast<int>(lay.size(g));
    const int64_t* order = kOrdered ? lay.order + begin : nullptr;
    const T* src = kOrdered ? rewards : rewards + begin;
    T* dst = kOrdered ? out : out + begin;
    double sum = 0.0;
    bool ok = true;
    for (int j = 0; j < n; ++j) {
      const double r = static_cast<double>(src[kOrdered ? order[j] : j]);
      ok &= ia::adv::check_reward(estimator, r) == ia::adv::kOk;
      sum += r;
    }
    if (!ok) {  // rare: find the offending sample for the message
      for (int j = 0; j < n; ++j) {
        const int64_t i = kOrdered ? order[j] : begin + j;
        const int code = ia::adv::check_reward(estimator, static_cast<double>(rewards[i]));
        if (code != ia::adv::kOk) first_error = std::min(first_error, pack_error(i, code));
      }
      continue;
    }
    double ss = 0.0;
    if (ia::adv::needs_squares(estimator)) {
      const double mean = sum / n;
      for (int j = 0; j < n; ++j) {
        const double d = static_cast<double>(src[kOrdered ? order[j] : j]) - mean;
        ss += d * d;
      }
    }
    const ia::adv::Affine f = ia::adv::affine_estimator(estimator, n, sum, ss, k, eps);
    for (int j = 0; j < n; ++j) {
      const int64_t at = kOrdered ? order[j] : j;
      dst[at] = static_cast<T>(f.scale * static_cast<double>(src[at]) + f.offset);
    }
  }
  return first_error;
}

// The estimator as a template argument: the checks and formulas fold to straight-line code.
template <typename T, bool kOrdered>
int64_t affine_groups_for(int estimator, const T* rewards, T* out, GroupLayout lay, int k, double eps) {
  switch (estimator) {
    case ia::adv::kReinforce: return affine_groups<T, kOrdered, ia::adv::kReinforce>(rewards, out, lay, k, eps);
    case ia::adv::kRloo: return affine_groups<T, kOrdered, ia::adv::kRloo>(rewards, out, lay, k, eps);
    case ia::adv::kGrpo: return affine_groups<T, kOrdered, ia::adv::kGrpo>(rewards, out, lay, k, eps);
    case ia::adv::kDrGrpo: return affine_groups<T, kOrdered, ia::adv::kDrGrpo>(rewards, out, lay, k, eps);
    default: return affine_groups<T, kOrdered, ia::adv::kPassKChen>(rewards, out, lay, k, eps);
  }
}

template <typename T>
std::pair<int, int64_t> group_advantages_typed(int estimator, int variant, const T* rewards, const int64_t* answers,
                                               T* out, GroupLayout lay, int64_t max_n, int k, double eps) {
  if (ia::adv::is_affine(estimator)) {
    const int64_t e = lay.order ? affine_groups_for<T, true>(estimator, rewards, out, lay, k, eps)
                                : affine_groups_for<T, false>(estimator, rewards, out, lay, k, eps);
    if (e == std::numeric_limits<int64_t>::max()) return {0, -1};
    return {static_cast<int>(e % 4), e / 4};
  }
  if (lay.order) return group_advantages_impl<T, true>(estimator, variant, rewards, answers, out, lay, max_n, k, eps);
  return group_advantages_impl<T, false>(estimator, variant, rewards, answers, out, lay, max_n, k, eps);
}

// Returns (error code, sample index): (0, -1) when every reward passed the estimator's checks,
// else the first offending sample (out is then incomplete). Error codes: ia::adv::InputError.
std::pair<int, int64_t> group_advantages(int estimator, int variant, bool is_double, std::uintptr_t rewards,
                                         std::uintptr_t answers, std::uintptr_t out, int64_t n_groups,
                                         int64_t group_size, std::uintptr_t offsets, std::uintptr_t order,
                                         int64_t max_group_size, int64_t k, double eps) {
  const GroupLayout lay = layout_of(n_groups, group_size, offsets, order);
  const int64_t* ans = reinterpret_cast<const int64_t*>(answers);
  if (is_double) {
    return group_advantages_typed(estimator, variant, reinterpret_cast<const double*>(rewards), ans,
                                 reinterpret_cast<double*>(out), lay, max_group_size, static_cast<int>(k), eps);
  }
  return group_advantages_typed(estimator, variant, reinterpret_cast<const float*>(rewards), ans,
                               reinterpret_cast<float*>(out), lay, max_group_size, static_cast<int>(k), eps);
}

template <typename T>
void length_penalized_impl(const unsigned char* correct, const double* lengths, T* out, GroupLayout lay,
                           int64_t max_n, double alpha) {
  py::gil_scoped_release no_gil;
#pragma omp parallel
  {
    std::vector<double> len(static_cast<size_t>(max_n)), res(static_cast<size_t>(max_n));
    std::vector<unsigned char> ok(static_cast<size_t>(max_n));
#pragma omp for schedule(dynamic, kScratchChunk)
    for (int64_t g = 0; g < lay.n_groups; ++g) {
      const int64_t begin = lay.begin(g);
      const int n = static_cast<int>(lay.size(g));
      for (int j = 0; j < n; ++j) {
        const int64_t src = lay.sample(begin + j);
        ok[j] = correct[src] != 0;
        len[j] = lengths[src];
      }
      ia::adv::length_penalized(ok.data(), len.data(), res.data(), n, alpha);
      for (int j = 0; j < n; ++j) out[lay.sample(begin + j)] = static_cast<T>(res[j]);
    }
  }
}

// correct: uint8/bool [n]; lengths: float64 [n]; out: float32 or float64 [n].
void length_penalized_rewards(std::uintptr_t correct, std::uintptr_t lengths, std::uintptr_t out, bool is_double,
                              int64_t n_groups, int64_t group_size, std::uintptr_t offsets, std::uintptr_t order,
                              int64_t max_group_size, double alpha) {
  const GroupLayout lay = layout_of(n_groups, group_size, offsets, order);
  const auto* c = reinterpret_cast<const unsigned char*>(correct);
  const auto* len = reinterpret_cast<const double*>(lengths);
  if (is_double) {
    length_penalized_impl(c, len, reinterpret_cast<double*>(out), lay, max_group_size, alpha);
  } else {
    length_penalized_impl(c, len, reinterpret_cast<float*>(out), lay, max_group_size, alpha);
  }
}

}  // namespace

void bind_advantages(py::module_& m) {
  // Named arguments: the Python callers pass them by keyword, so pybind11 checks every name.
  m.def("group_advantages", &group_advantages,
        "Per-group advantages (raw pointers); returns (error code, first offending sample index)",
        py::arg("estimator"), py::arg("variant"), py::arg("is_double"), py::arg("rewards"), py::arg("answers"),
        py::arg("out"), py::arg("n_groups"), py::arg("group_size"), py::arg("offsets"), py::arg("order"),
        py::arg("max_group_size"), py::arg("k"), py::arg("eps"));
  m.def("length_penalized_rewards", &length_penalized_rewards,
        "Arora & Zanette length-penalised rewards per group (raw pointers)", py::arg("correct"),
        py::arg("lengths"), py::arg("out"), py::arg("is_double"), py::arg("n_groups"), py::arg("group_size"),
        py::arg("offsets"), py::arg("order"), py::arg("max_group_size"), py::arg("alpha"));
  // The enums' codes, so that the Python side's tables (ia_kernels/core/numerics.py) are checked
  // against the header they mirror (tests/test_numerics_constants.py).
  py::dict estimators;
  estimators["reinforce"] = static_cast<int>(ia::adv::kReinforce);
  estimators["rloo"] = static_cast<int>(ia::adv::kRloo);
  estimators["grpo"] = static_cast<int>(ia::adv::kGrpo);
  estimators["dr_grpo"] = static_cast<int>(ia::adv::kDrGrpo);
  estimators["passk"] = static_cast<int>(ia::adv::kPassK);
  estimators["passk_chen"] = static_cast<int>(ia::adv::kPassKChen);
  estimators["majority"] = static_cast<int>(ia::adv::kMajority);
  m.attr("ESTIMATOR_CODES") = estimators;
  py::dict variants;
  variants["s"] = static_cast<int>(ia::adv::kVariantS);
  variants["loo"] = static_cast<int>(ia::adv::kVariantLoo);
  variants["loo-1"] = static_cast<int>(ia::adv::kVariantLooMinus1);
  variants["centred"] = static_cast<int>(ia::adv::kVariantCentred);
  m.attr("PASSK_VARIANT_CODES") = variants;
  m.attr("REWARD_ERROR_CODES") = py::make_tuple(static_cast<int>(ia::adv::kNonFinite),
                                                static_cast<int>(ia::adv::kOutsideUnit),
                                                static_cast<int>(ia::adv::kNotBinary));
}

// Per-group advantage estimators and length-penalised rewards, shared by the CPU (OpenMP) and CUDA
// kernels. The functions work on one group's values, gathered into contiguous scratch (passk,
// majority) or streamed from the input into a few group statistics (the affine estimators), and
// compute in double whatever the input dtype.
//
// Notation: a group holds n samples with rewards r_0..r_{n-1}; k is the number of samples the
// inference-time objective uses. The estimators (docs/design.md, "The estimators"):
//   reinforce  A_i = r_i
//   rloo       A_i = r_i - mean_{j != i} r_j                     (0 for a group of one)
//   grpo       A_i = (r_i - mean) / (std + eps), Bessel std      (0 for a group of one)
//   dr_grpo    A_i = r_i - mean                                  (0 for a group of one)
//   passk      PKPO (Walder & Karkhanis 2025) per-sample values for the objective
//              maxg@k = E[max of k rewards], rewards in [0, 1]; see passk() below.
//              With n == k the default variant is Tang et al.'s A_i = max(r) - max(r without i).
//   passk_chen Chen et al. 2025's analytic pass@k advantages for binary rewards; see chen_advantages().
//   majority   Tang et al.'s leave-one-out estimator for f = the reward of the majority answer.
#pragma once

#include "ia/common.h"

namespace ia {
namespace adv {

enum Estimator : int {
  kReinforce = 0,
  kRloo = 1,
  kGrpo = 2,
  kDrGrpo = 3,
  kPassK = 4,
  kPassKChen = 5,
  kMajority = 6,
};

enum PassKVariant : int {
  kVariantS = 0,
  kVariantLoo = 1,
  kVariantLooMinus1 = 2,
  kVariantCentred = 3,  // loo-1 minus its group mean: Tang et al.'s centred form (biased)
};

// Input errors a kernel reports (with the index of the first offending sample).
enum InputError : int {
  kOk = 0,
  kNonFinite = 1,      // NaN or inf reward
  kOutsideUnit = 2,    // (no longer reported: PKPO's passk takes any real reward)
  kNotBinary = 3,      // passk_chen reward other than 0 or 1
};

IA_HOST_DEVICE int check_reward(int estimator, double r) {
#if defined(__CUDA_ARCH__)
  if (!isfinite(r)) return kNonFinite;
#else
  if (!std::isfinite(r)) return kNonFinite;
#endif
  if (estimator == kPassKChen && r != 0.0 && r != 1.0) return kNotBinary;
  return kOk;
}

// Scratch for one group of n samples, separate arrays of n entries each, none aliasing another.
struct GroupScratch {
  double* r;     // rewards in; passk reuses it once the rewards are copied to g
  double* a;     // advantages out
  double* g;     // work: sorted rewards (passk), reward sum of each sample's answer (majority)
  double* c;     // work: answer count of each sorted sample (majority)
  int* idx;      // work: the sorting permutation
  const int64_t* ans;  // answer ids in (majority)
};

// passk's binomial weight tables for one (n, k, variant), n entries each (see fill_passk_tables).
// They depend on the group size only, so the CPU kernel fills them once per size, not per group.
struct PassKTables {
  double* w;
  double* u;
  double* v;
};

// ---- sorting (device-safe: no recursion, no std::) ------------------------------------------

// Restores the max-heap property of idx[0..end) below `root`, the heap ordered by key[idx[.]].
template <typename Key>
IA_HOST_DEVICE void sift_down(const Key* key, int* idx, int root, int end) {
  while (2 * root + 1 < end) {
    int child = 2 * root + 1;
    if (child + 1 < end && key[idx[child]] < key[idx[child + 1]]) ++child;
    if (!(key[idx[root]] < key[idx[child]])) return;
    const int t = idx[root];
    idx[root] = idx[child];
    idx[child] = t;
    root = child;
  }
}

// idx <- the permutation that sorts key ascending (key[idx[0]] <= key[idx[1]] <= ...).
// Groups of up to 32 samples (the common case) use a rank sort: each element's position is the
// number of elements before it in (key, index) order, O(n^2) comparisons but branch-free, so no
// mispredictions and the inner loop vectorises (an insertion sort of 8 random keys costs ~5x
// more). Larger groups use heapsort, O(n log n) in the worst case. Every estimator below is
// invariant to the order of equal keys.
template <typename Key>
IA_HOST_DEVICE void sort_order(const Key* key, int* idx, int n) {
  if (n <= 32) {
    for (int i = 0; i < n; ++i) {
      const Key ki = key[i];
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += (key[j] < ki) | ((key[j] == ki) & (j < i));
      idx[rank] = i;
    }
    return;
  }
  for (int i = 0; i < n; ++i) idx[i] = i;
  for (int root = n / 2 - 1; root >= 0; --root) sift_down(key, idx, root, n);
  for (int end = n - 1; end > 0; --end) {
    const int t = idx[0];
    idx[0] = idx[end];
    idx[end] = t;
    sift_down(key, idx, 0, end);
  }
}

// ---- estimators affine in the reward: reinforce, rloo, grpo, dr_grpo, passk_chen -------------
//
// Each is A_i = scale * r_i + offset with (scale, offset) from the group's statistics: the sum of
// the rewards and, for grpo, the sum of squared deviations from the mean (a second sweep, so the
// variance suffers no cancellation). The kernels read a group's rewards straight from the input
// for the statistics and again for the outputs, with no scratch copy.
//   reinforce   1 * r + 0
//   rloo        r - (sum - r)/(n-1)  =  n/(n-1) * r - sum/(n-1)
//   dr_grpo     r - mean
//   grpo        (r - mean) / (std + eps), std = sqrt(ss / (n-1))
//   passk_chen  r in {0, 1}: a_neg + r (a_pos - a_neg), see chen_advantages below
// A group of one gets A = 0 except under reinforce; eps = 0 with a zero std gives A = 0, not NaN.

struct Affine {
  double scale;
  double offset;
};

IA_HOST_DEVICE bool needs_squares(int estimator) { return estimator == kGrpo; }

IA_HOST_DEVICE bool is_affine(int estimator) {
  return estimator == kReinforce || estimator == kRloo || estimator == kGrpo || estimator == kDrGrpo ||
         estimator == kPassKChen;
}

// ---- passk: PKPO's per-sample values -----------------------------------------------------------
//
// Let g_1 <= ... <= g_n be the group's rewards sorted ascending (1-based positions j here).
// rho(g, k), the unbiased estimate of maxg@k from n samples, averages max over all C(n,k)
// k-subsets; the j-th order statistic is the max of exactly C(j-1, k-1) of them:
//     rho(g, k) = sum_j C(j-1, k-1) / C(n, k) * g_j .
// PKPO's s_i = (1 / C(n,k)) * sum over k-subsets I that contain i of max_I g makes
// sum_i s_i grad log pi(y_i) an unbiased estimate of grad maxg@k (it averages the k-sample
// REINFORCE estimator over every k-subset). A subset containing position i has max g_i when its
// other k-1 members all sit below i (C(i-1, k-1) subsets) and max g_j, j > i, when j is in it and
// the other k-2 members sit below j (C(j-2, k-2) subsets), so
//     s_i = [ C(i-1, k-1) g_i + sum_{j > i} C(j-2, k-2) g_j ] / C(n, k) .        (sum_i s_i = k rho)
// Equal rewards get equal s (Pascal's rule), so the order of ties does not matter.
// The variants subtract a baseline that does not depend on sample i (so they stay unbiased):
//   "s":     s_i as is.
//   "loo":   s_i - (1/(n-1)) sum_{j != i} S(j, k, g without i)  =  s_i - k/(n-1) * rho(g_{-i}, k),
//            S(.) being s computed on the n-1 other samples; needs k <= n-1.
//   "loo-1": (1/C(n,k)) sum_{I containing i} [max_I g - max_{I \ i} g]  =  s_i - (k/n) rho(g_{-i}, k-1)
//            (the k-1 subsets I \ i are each counted once; C(n-1,k-1)/C(n,k) = k/n). With k = 1 the
//            baseline is PKPO's leave-one-out mean, s_i - (1/n) mean(g_{-i}) = RLOO / n (the same
//            scale as k > 1: sum_i s_i = k rho); a group of one keeps s. With n == k it is Tang et
//            al.'s max(r) - max(r without i).
//   "centred": loo-1 minus its group mean, Tang et al.'s centred form: it depends on every sample,
//            so it is biased (tests/test_advantages_unbiased.py measures by how much).
// Rewards may be any real numbers (PKPO: the objective is the expected max of k rewards).
// Binomial ratios are built by ratio recursions from the top position down (never C(n,k) itself):
//     C(j-1,k-1)/C(n,k): top value k/n (j = n), then times (j-k)/(j-1) going from j to j-1;
//     C(j-2,k-2)/C(n,k): top value k(k-1)/(n(n-1)),  then times (j-k)/(j-2).
// Each step multiplies by a factor in [0, 1], so nothing overflows and small weights underflow
// gracefully; the whole group costs O(n log n) for the sort and O(n) after it.

// v[q] = C(q, m-1) / C(size, m) for 0-based q in [0, size), m >= 1 (zero below q = m-1).
IA_HOST_DEVICE void order_weights(double* v, int size, int m) {
  double w = static_cast<double>(m) / size;
  for (int q = size - 1; q >= 0; --q) {
    v[q] = w;
    const int j = q + 1;  // 1-based; from j to j-1 the weight is multiplied by (j-m)/(j-1)
    w = (j > m) ? w * static_cast<double>(j - m) / (j - 1) : 0.0;
  }
}

// The tables for a group of n, 0-based sorted positions p:
//   w[p] = C(p, k-1) / C(n, k)      (position p is the max of the subset)
//   u[p] = C(p-1, k-2) / C(n, k)    (position p is the max of a subset holding a lower position)
//   v[q] = C(q, m-1) / C(n-1, m)    (rho over the n-1 others; m = k for loo, k-1 for loo-1),
//          v[n-1] = 0, and v = 0 for variant s or m = 0 (no baseline).
IA_HOST_DEVICE void fill_passk_tables(PassKTables t, int n, int k, int variant) {
  double w = static_cast<double>(k) / n;
  double u = (k >= 2 && n >= 2) ? static_cast<double>(k) * (k - 1) / (static_cast<double>(n) * (n - 1)) : 0.0;
  for (int p = n - 1; p >= 0; --p) {
    t.w[p] = w;
    t.u[p] = u;
    const int j = p + 1;  // 1-based position
    w = (j > k) ? w * static_cast<double>(j - k) / (j - 1) : 0.0;
    u = (j > k && j > 2) ? u * static_cast<double>(j - k) / (j - 2) : 0.0;
  }
  const int m = variant == kVariantLoo ? k : (k == 1 ? 1 : k - 1);  // loo-1 at k = 1: the mean
  if (variant == kVariantS || m < 1 || n < 2) {
    for (int q = 0; q < n; ++q) t.v[q] = 0.0;
  } else {
    order_weights(t.v, n - 1, m);
    t.v[n - 1] = 0.0;
  }
}

// passk for one group (1 <= k <= n, and k <= n-1 for "loo": the launcher checks), with the tables
// filled for this n. After sorting g, one backward sweep gives s_p (through the running sum of
// u g above p) minus the baseline's part above p, and one forward sweep subtracts the part below
// p and scatters to a[] in the original order. Removing position p shifts the positions above it
// down by one, so the baseline is sum_{q<p} v[q] g[q] + sum_{q>p} v[q-1] g[q].
IA_HOST_DEVICE void passk(GroupScratch s, PassKTables t, int n, int k, int variant) {
  sort_order(s.r, s.idx, n);
  for (int p = 0; p < n; ++p) s.g[p] = s.r[s.idx[p]];
  const double scale = variant == kVariantS ? 0.0
                       : variant == kVariantLoo ? static_cast<double>(k) / (n - 1)
                                                : static_cast<double>(k) / n;
  double* part = s.r;  // the rewards now live in g
  double tail = 0.0, above = 0.0;
  for (int p = n - 1; p >= 0; --p) {
    part[p] = t.w[p] * s.g[p] + tail - scale * above;
    tail += t.u[p] * s.g[p];
    if (p >= 1) above += t.v[p - 1] * s.g[p];
  }
  double below = 0.0, total = 0.0;
  for (int p = 0; p < n; ++p) {
    s.a[s.idx[p]] = part[p] - scale * below;
    total += s.a[s.idx[p]];
    below += t.v[p] * s.g[p];
  }
  if (variant == kVariantCentred) {
    const double mean = total / n;
    for (int i = 0; i < n; ++i) s.a[i] -= mean;
  }
}

// ---- passk_chen: Chen et al. 2025, binary rewards ------------------------------------------------
//
// Bootstrap k-subsets of the group; each subset's reward is max (1 if any is correct); normalise
// the subset rewards GRPO-style over all C(n,k) subsets; a sample's advantage is the mean of the
// normalised rewards of the subsets that contain it. In closed form, with c correct samples:
//     R = 1 - C(n-c, k)/C(n, k)                    (the mean subset reward = unbiased pass@k)
//     sigma = sqrt(R (1 - R))                      (their population std: the rewards are 0/1)
//     A_correct   = (1 - R) / (sigma + eps)
//     A_incorrect = (1 - R - C(n-c-1, k-1)/C(n-1, k-1)) / (sigma + eps)
// Equivalently (n/k) (s_i - mean(s)) / (sigma + eps) with PKPO's binary s_i. All-correct and
// all-wrong groups give 0. It is affine in r (r in {0, 1}), so it takes the affine path above.

// C(a, b)/C(c, b) = prod_{i<b} (a-i)/(c-i) for a <= c; 0 when a < b.
IA_HOST_DEVICE double binom_ratio(int a, int c, int b) {
  if (a < b) return 0.0;
  double x = 1.0;
  for (int i = 0; i < b; ++i) x *= static_cast<double>(a - i) / (c - i);
  return x;
}

// (A for a correct sample, A for an incorrect one) in a group of n with c correct.
IA_HOST_DEVICE Affine chen_advantages(int n, int c, int k, double eps) {
  const double R = 1.0 - binom_ratio(n - c, n, k);
  const double sigma = sqrt(R * (1.0 - R));
  const double inv = sigma + eps > 0.0 ? 1.0 / (sigma + eps) : 0.0;  // eps = 0, R in {0,1}: A = 0
  const double miss = binom_ratio(n - c - 1, n - 1, k - 1);  // P(the other k-1 all wrong | i in subset)
  return {(1.0 - R) * inv, (1.0 - R - miss) * inv};  // {correct, incorrect}
}

// (scale, offset) of an affine estimator from the group's size n, reward sum and (grpo only) the
// sum of squared deviations ss.
IA_HOST_DEVICE Affine affine_estimator(int estimator, int n, double sum, double ss, int k, double eps) {
  if (estimator == kReinforce) return {1.0, 0.0};
  if (estimator == kPassKChen) {
    const Affine pn = chen_advantages(n, static_cast<int>(sum + 0.5), k, eps);
    return {pn.scale - pn.offset, pn.offset};
  }
  if (n == 1) return {0.0, 0.0};
  const double mean = sum / n;
  if (estimator == kRloo) return {static_cast<double>(n) / (n - 1), -sum / (n - 1)};
  if (estimator == kDrGrpo) return {1.0, -mean};
  const double scale = sqrt(ss / (n - 1)) + eps;  // grpo
  const double inv = scale > 0.0 ? 1.0 / scale : 0.0;
  return {inv, -mean * inv};
}

// The affine estimators over a gathered group: the per-group entry point's form; the kernels use
// the streaming form (statistics from the input, then affine_estimator) instead.
IA_HOST_DEVICE void affine_group(const double* r, double* a, int n, int estimator, int k, double eps) {
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += r[i];
  double ss = 0.0;
  if (needs_squares(estimator)) {
    const double mean = sum / n;
    for (int i = 0; i < n; ++i) ss += (r[i] - mean) * (r[i] - mean);
  }
  const Affine f = affine_estimator(estimator, n, sum, ss, k, eps);
  for (int i = 0; i < n; ++i) a[i] = f.scale * r[i] + f.offset;
}

// ---- majority: Tang et al.'s leave-one-out estimator for majority voting (n == k) ------------
//
// f(set) = the reward of the most frequent answer in the set; with several answers tied for most
// frequent, the vote picks one uniformly at random, so f is the mean reward over the tied answers.
// An answer's reward is the mean reward of the samples that gave it (the same value when rewards
// are a function of the answer, as they are for correctness). f(empty set) = 0.
// A_i = f(all) - f(all but i); f(all but i) is f(all) unless i's answer is among the tied top:
//   - tied with others (t > 1 answers at the top count M): the top set loses i's answer;
//   - alone at the top: its count drops to M-1 and it joins the answers already at M-1.
// O(n log n) for the sort, O(n) after it.
IA_HOST_DEVICE void majority(GroupScratch s, int n) {
  sort_order(s.ans, s.idx, n);
  // Runs of equal answers: each sorted position gets its answer's reward sum (g) and count (c).
  int top = 0;
  for (int p = 0; p < n;) {
    const int64_t answer = s.ans[s.idx[p]];
    int q = p;
    double rs = 0.0;
    while (q < n && s.ans[s.idx[q]] == answer) rs += s.r[s.idx[q++]];
    for (int x = p; x < q; ++x) {
      s.g[x] = rs;
      s.c[x] = q - p;
    }
    if (q - p > top) top = q - p;
    p = q;
  }
  // The answers at the top count M and at M-1: how many, and the sum of their mean rewards.
  int t_top = 0, t_next = 0;
  double sum_top = 0.0, sum_next = 0.0;
  for (int p = 0; p < n;) {
    const int cnt = static_cast<int>(s.c[p]);
    if (cnt == top) { ++t_top; sum_top += s.g[p] / cnt; }
    else if (cnt == top - 1) { ++t_next; sum_next += s.g[p] / cnt; }
    p += cnt;
  }
  const double f_all = sum_top / t_top;
  for (int p = 0; p < n; ++p) {
    const int i = s.idx[p];
    const int cnt = static_cast<int>(s.c[p]);
    double f_rest;
    if (cnt < top) {
      f_rest = f_all;
    } else if (t_top > 1) {
      f_rest = (sum_top - s.g[p] / cnt) / (t_top - 1);
    } else if (top == 1) {
      f_rest = 0.0;  // n == 1: nothing left to vote
    } else {
      f_rest = (sum_next + (s.g[p] - s.r[i]) / (top - 1)) / (t_next + 1);
    }
    s.a[i] = f_all - f_rest;
  }
}

// ---- dispatch -----------------------------------------------------------------------------------

// passk needs `tables` filled for (n, k, variant) by fill_passk_tables; the others ignore it.
IA_HOST_DEVICE void group_advantages(GroupScratch s, PassKTables tables, int estimator, int variant, int n, int k,
                                     double eps) {
  if (is_affine(estimator)) {
    affine_group(s.r, s.a, n, estimator, k, eps);
  } else if (estimator == kPassK) {
    passk(s, tables, n, k, variant);
  } else if (estimator == kMajority) {
    majority(s, n);
  } else {
    for (int i = 0; i < n; ++i) s.a[i] = 0.0;
  }
}

// ---- length-penalised rewards (Arora & Zanette 2025) ------------------------------------------
//
// For a correct response: r = 1 - alpha * sigmoid((len - mu) / (sd + 1e-7)), mu and sd the mean
// and population std of the lengths of the correct responses of the same prompt; incorrect
// responses get 0. `correct` holds 0/1, `len` the lengths, `out` the rewards.
IA_HOST_DEVICE void length_penalized(const unsigned char* correct, const double* len, double* out, int n,
                                     double alpha) {
  int c = 0;
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    if (correct[i]) { ++c; sum += len[i]; }
  }
  const double mu = c ? sum / c : 0.0;
  double ss = 0.0;
  for (int i = 0; i < n; ++i) {
    if (correct[i]) ss += (len[i] - mu) * (len[i] - mu);
  }
  const double sd = c ? sqrt(ss / c) : 0.0;
  const double inv = 1.0 / (sd + 1e-7);
  for (int i = 0; i < n; ++i) {
    out[i] = correct[i] ? 1.0 - alpha / (1.0 + exp(-(len[i] - mu) * inv)) : 0.0;
  }
}

}  // namespace adv
}  // namespace ia

// Per-group advantage estimators and length-penalised rewards, shared by the CPU (OpenMP) and CUDA
// kernels. Every function works on one group's values, already gathered into contiguous scratch,
// and computes in double whatever the input dtype.
//
// Notation: a group holds n samples with rewards r_0..r_{n-1}; k is the number of samples the
// inference-time objective uses. The estimators (DESIGN.md, "The estimators"):
//   reinforce  A_i = r_i
//   rloo       A_i = r_i - mean_{j != i} r_j                     (0 for a group of one)
//   grpo       A_i = (r_i - mean) / (std + eps), Bessel std      (0 for a group of one)
//   dr_grpo    A_i = r_i - mean                                  (0 for a group of one)
//   passk      PKPO (Walder & Karkhanis 2025) per-sample values for the objective
//              maxg@k = E[max of k rewards], rewards in [0, 1]; see passk() below.
//              With n == k the default variant is Tang et al.'s A_i = max(r) - max(r without i).
//   passk_chen Chen et al. 2025's analytic pass@k advantages for binary rewards; see passk_chen().
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
};

// Input errors a kernel reports (with the index of the first offending sample).
enum InputError : int {
  kOk = 0,
  kNonFinite = 1,      // NaN or inf reward
  kOutsideUnit = 2,    // passk reward outside [0, 1]
  kNotBinary = 3,      // passk_chen reward other than 0 or 1
};

IA_HOST_DEVICE int check_reward(int estimator, double r) {
#if defined(__CUDA_ARCH__)
  if (!isfinite(r)) return kNonFinite;
#else
  if (!std::isfinite(r)) return kNonFinite;
#endif
  if (estimator == kPassK && (r < 0.0 || r > 1.0)) return kOutsideUnit;
  if (estimator == kPassKChen && r != 0.0 && r != 1.0) return kNotBinary;
  return kOk;
}

// Scratch for one group of n samples: r (rewards in), a (advantages out), g and v (work, passk),
// idx (a permutation), ans (answer ids in, majority). Separate arrays, none aliasing another.
struct GroupScratch {
  double* r;
  double* a;
  double* g;
  double* v;
  int* idx;
  const int64_t* ans;
};

// ---- sorting (device-safe: no recursion, no std::) ------------------------------------------

// Restores the max-heap property of idx[0..end) below `root` (heap ordered by key[idx[.]]).
template <typename Key>
IA_HOST_DEVICE void sift_down(const Key* key, int* idx, int root, int end) {
  while (2 * root + 1 < end) {
    int child = 2 * root + 1;
    if (child + 1 < end && key[idx[child]] < key[idx[child + 1]]) ++child;
    if (!(key[idx[root]] < key[idx[child]])) return;
    int t = idx[root];
    idx[root] = idx[child];
    idx[child] = t;
    root = child;
  }
}

// idx <- the permutation that sorts key ascending. Insertion sort for small groups (the common
// case: 4..64 samples), heapsort beyond, so the worst case stays O(n log n). Ties keep no
// particular order: every estimator below is invariant to the order of equal keys.
template <typename Key>
IA_HOST_DEVICE void sort_indices(const Key* key, int* idx, int n) {
  for (int i = 0; i < n; ++i) idx[i] = i;
  if (n <= 32) {
    for (int i = 1; i < n; ++i) {
      int cur = idx[i];
      Key kc = key[cur];
      int j = i - 1;
      while (j >= 0 && key[idx[j]] > kc) {
        idx[j + 1] = idx[j];
        --j;
      }
      idx[j + 1] = cur;
    }
    return;
  }
  // Heapsort: build a max-heap of indices by key, then move the maximum to the end.
  for (int root = n / 2 - 1; root >= 0; --root) sift_down(key, idx, root, n);
  for (int end = n - 1; end > 0; --end) {
    int t = idx[0];
    idx[0] = idx[end];
    idx[end] = t;
    sift_down(key, idx, 0, end);
  }
}

// ---- mean-baseline estimators ------------------------------------------------------------------

IA_HOST_DEVICE double group_sum(const double* r, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += r[i];
  return s;
}

IA_HOST_DEVICE void reinforce(const double* r, double* a, int n) {
  for (int i = 0; i < n; ++i) a[i] = r[i];
}

IA_HOST_DEVICE void rloo(const double* r, double* a, int n) {
  if (n == 1) { a[0] = 0.0; return; }
  const double s = group_sum(r, n);
  for (int i = 0; i < n; ++i) a[i] = r[i] - (s - r[i]) / (n - 1);
}

IA_HOST_DEVICE void dr_grpo(const double* r, double* a, int n) {
  const double mean = group_sum(r, n) / n;
  for (int i = 0; i < n; ++i) a[i] = n == 1 ? 0.0 : r[i] - mean;
}

IA_HOST_DEVICE void grpo(const double* r, double* a, int n, double eps) {
  if (n == 1) { a[0] = 0.0; return; }
  const double mean = group_sum(r, n) / n;
  double ss = 0.0;  // two passes: no cancellation in the variance
  for (int i = 0; i < n; ++i) ss += (r[i] - mean) * (r[i] - mean);
  const double scale = sqrt(ss / (n - 1)) + eps;
  const double inv = scale > 0.0 ? 1.0 / scale : 0.0;  // eps = 0 and equal rewards: A = 0, not NaN
  for (int i = 0; i < n; ++i) a[i] = (r[i] - mean) * inv;
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
//            (the k-1 subsets I \ i are each counted once; C(n-1,k-1)/C(n,k) = k/n). With k = 1,
//            rho(., 0) = 0 and loo-1 is s. With n == k it is Tang et al.'s max(r) - max(r without i).
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
    // from 1-based j = q+1 to j-1: times (j-m)/(j-1); zero once j <= m
    const int j = q + 1;
    w = (j > m) ? w * static_cast<double>(j - m) / (j - 1) : 0.0;
  }
}

// rho(g, m) for sorted g: the unbiased estimate of E[max of m] from all `size` values.
IA_HOST_DEVICE double rho_sorted(const double* g, double* v, int size, int m) {
  if (m < 1) return 0.0;
  order_weights(v, size, m);
  double s = 0.0;
  for (int q = 0; q < size; ++q) s += v[q] * g[q];
  return s;
}

// Writes PKPO's s (sorted order) into out[p] for sorted rewards g[0..n).
IA_HOST_DEVICE void pkpo_s_sorted(const double* g, double* out, int n, int k) {
  // Walk down from the top: w = C(p, k-1)/C(n,k) and u = C(p-1, k-2)/C(n,k) at 0-based p.
  double w = static_cast<double>(k) / n;
  double u = (k >= 2 && n >= 2) ? static_cast<double>(k) * (k - 1) / (static_cast<double>(n) * (n - 1)) : 0.0;
  double tail = 0.0;  // sum_{q > p} u_q g_q
  for (int p = n - 1; p >= 0; --p) {
    out[p] = w * g[p] + tail;
    tail += u * g[p];
    const int j = p + 1;  // 1-based position
    w = (j > k) ? w * static_cast<double>(j - k) / (j - 1) : 0.0;
    u = (j > k && j > 2) ? u * static_cast<double>(j - k) / (j - 2) : 0.0;
  }
}

// The leave-one-out baselines: base[p] = rho(g without position p, m), for every p, in O(n).
// Removing p shifts the positions above it down by one, so with v the weights for n-1 values,
// base[p] = sum_{q < p} v[q] g[q] + sum_{q > p} v[q-1] g[q].
IA_HOST_DEVICE void loo_rho_sorted(const double* g, double* v, double* base, int n, int m) {
  if (m < 1) {
    for (int p = 0; p < n; ++p) base[p] = 0.0;
    return;
  }
  order_weights(v, n - 1, m);
  double below = 0.0;
  for (int p = 0; p < n; ++p) {
    base[p] = below;
    if (p < n - 1) below += v[p] * g[p];
  }
  double above = 0.0;
  for (int p = n - 1; p >= 0; --p) {
    base[p] += above;
    if (p >= 1) above += v[p - 1] * g[p];
  }
}

// passk for one group: needs 1 <= k <= n (and k <= n-1 for "loo"; the launcher checks).
// Uses s.idx, s.g (sorted rewards), s.v (weights) and s.a; reads, then overwrites, s.r.
IA_HOST_DEVICE void passk(GroupScratch s, int n, int k, int variant) {
  sort_indices(s.r, s.idx, n);
  for (int p = 0; p < n; ++p) s.g[p] = s.r[s.idx[p]];
  // s (sorted order) goes to a[] first, then is scattered back through idx via v as a buffer.
  double* s_sorted = s.a;
  pkpo_s_sorted(s.g, s_sorted, n, k);
  if (variant != kVariantS) {
    const int m = variant == kVariantLoo ? k : k - 1;
    const double scale = variant == kVariantLoo ? static_cast<double>(k) / (n - 1) : static_cast<double>(k) / n;
    // base[] must not alias v (the weights): keep it in the r array, whose values now live in g.
    double* base = s.r;
    loo_rho_sorted(s.g, s.v, base, n, m);
    for (int p = 0; p < n; ++p) s_sorted[p] -= scale * base[p];
  }
  for (int p = 0; p < n; ++p) s.v[p] = s_sorted[p];
  for (int p = 0; p < n; ++p) s.a[s.idx[p]] = s.v[p];
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
// all-wrong groups give 0.

// C(a, b)/C(c, b) = prod_{i<b} (a-i)/(c-i) for a <= c; 0 when a < b.
IA_HOST_DEVICE double binom_ratio(int a, int c, int b) {
  if (a < b) return 0.0;
  double x = 1.0;
  for (int i = 0; i < b; ++i) x *= static_cast<double>(a - i) / (c - i);
  return x;
}

IA_HOST_DEVICE void passk_chen(const double* r, double* a, int n, int k, double eps) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += r[i] != 0.0;
  const double R = 1.0 - binom_ratio(n - c, n, k);
  const double sigma = sqrt(R * (1.0 - R));
  const double inv = sigma + eps > 0.0 ? 1.0 / (sigma + eps) : 0.0;  // eps = 0, R in {0,1}: A = 0
  const double miss = binom_ratio(n - c - 1, n - 1, k - 1);  // P(other k-1 all wrong | i in subset)
  const double a_pos = (1.0 - R) * inv;
  const double a_neg = (1.0 - R - miss) * inv;
  for (int i = 0; i < n; ++i) a[i] = r[i] != 0.0 ? a_pos : a_neg;
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
// Uses s.idx and s.g (reward sums per sorted position), O(n log n).
IA_HOST_DEVICE void majority(GroupScratch s, int n) {
  sort_indices(s.ans, s.idx, n);
  // First pass over runs of equal answers: top count M and the reward sums at counts M and M-1.
  int top = 0, t_top = 0, t_next = 0;
  double sum_top = 0.0, sum_next = 0.0;  // sum over answers at count M (M-1) of their mean reward
  for (int pass = 0; pass < 2; ++pass) {
    for (int p = 0; p < n;) {
      int q = p;
      double rs = 0.0;
      while (q < n && s.ans[s.idx[q]] == s.ans[s.idx[p]]) rs += s.r[s.idx[q++]];
      const int cnt = q - p;
      if (pass == 0) {
        if (cnt > top) top = cnt;
      } else if (cnt == top) {
        ++t_top;
        sum_top += rs / cnt;
      } else if (cnt == top - 1) {
        ++t_next;
        sum_next += rs / cnt;
      }
      for (int x = p; x < q; ++x) { s.g[x] = rs; s.v[x] = cnt; }
      p = q;
    }
  }
  const double f_all = sum_top / t_top;
  for (int p = 0; p < n; ++p) {
    const int i = s.idx[p];
    const int cnt = static_cast<int>(s.v[p]);
    const double rs = s.g[p];
    double f_rest;
    if (cnt < top) {
      f_rest = f_all;
    } else if (t_top > 1) {
      f_rest = (sum_top - rs / cnt) / (t_top - 1);
    } else if (top == 1) {
      f_rest = 0.0;  // n == 1: nothing left to vote
    } else {
      f_rest = (sum_next + (rs - s.r[i]) / (top - 1)) / (t_next + 1);
    }
    s.a[i] = f_all - f_rest;
  }
}

// ---- dispatch -----------------------------------------------------------------------------------

IA_HOST_DEVICE void group_advantages(GroupScratch s, int estimator, int variant, int n, int k, double eps) {
  switch (estimator) {
    case kReinforce: reinforce(s.r, s.a, n); break;
    case kRloo: rloo(s.r, s.a, n); break;
    case kGrpo: grpo(s.r, s.a, n, eps); break;
    case kDrGrpo: dr_grpo(s.r, s.a, n); break;
    case kPassK: passk(s, n, k, variant); break;
    case kPassKChen: passk_chen(s.r, s.a, n, k, eps); break;
    case kMajority: majority(s, n); break;
    default: for (int i = 0; i < n; ++i) s.a[i] = 0.0; break;
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

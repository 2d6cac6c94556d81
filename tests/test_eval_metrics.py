"""pass_at_k, group_pass_at_k and maj_at_k against exact references (integer binomials, k-subset
enumeration). Their unbiasedness over whole policies is in test_advantages_unbiased.py."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
import torch

import ia_kernels as ik
from ia_kernels.reference import advantages as ref


def test_pass_at_k_matches_exact_binomials():
    gen = torch.Generator().manual_seed(0)
    n = torch.randint(1, 40, (200,), generator=gen)
    c = (torch.rand(200, generator=gen) * (n + 1)).floor().to(torch.int64)
    for k in (1, 2, 5, 16):
        keep = n >= k
        got = ik.pass_at_k(c[keep], n[keep], k)
        want = torch.tensor([ref.pass_at_k(ci, ni, k) for ci, ni in zip(c[keep].tolist(), n[keep].tolist())],
                            dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_pass_at_k_large_n_stays_accurate():
    # C(1000, 500) overflows float64; the product form does not need it.
    for c, k in [(1, 1), (3, 10), (250, 500), (999, 1)]:
        assert ik.pass_at_k(c, 1000, k).item() == pytest.approx(ref.pass_at_k(c, 1000, k), rel=1e-13, abs=1e-15)
    assert ik.pass_at_k(0, 1000, 500).item() == 0.0
    assert ik.pass_at_k(501, 1000, 500).item() == 1.0  # n - c < k: every 500-subset holds a correct one


def test_pass_at_k_broadcasts_and_keeps_shape():
    out = ik.pass_at_k(torch.tensor([[0, 1], [2, 4]]), 4, 2)
    assert out.shape == (2, 2) and out.dtype == torch.float64
    assert out.flatten().tolist() == pytest.approx([0.0, 0.5, 5 / 6, 1.0], abs=1e-15)
    assert ik.pass_at_k(2, 4, 2).shape == ()


def test_group_pass_at_k_from_per_sample_correctness():
    correct = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 1], dtype=torch.bool)
    ids = torch.tensor([5, 2, 5, 5, 2, 2, 5, 2, 2])  # group 2: 2 of 5 correct; group 5: 2 of 4
    got = ik.group_pass_at_k(correct, ids, 2)
    assert got.tolist() == pytest.approx([ref.pass_at_k(2, 5, 2), ref.pass_at_k(2, 4, 2)], abs=1e-15)
    assert ik.group_pass_at_k(correct.float()[:8], 4, 1).tolist() == pytest.approx([0.5, 0.25], abs=1e-15)


def test_maj_at_k_matches_subset_enumeration():
    gen = torch.Generator().manual_seed(1)
    for trial in range(12):
        sizes = torch.randint(1, 9, (5,), generator=gen)
        k = int(torch.randint(1, int(sizes.min()) + 1, (), generator=gen))
        ids = torch.repeat_interleave(torch.tensor([9, 3, 7, 1, 4]), sizes)
        perm = torch.randperm(ids.numel(), generator=gen)
        ids = ids[perm]
        answers = torch.randint(0, 4, ids.shape, generator=gen)
        binary = trial % 2 == 0
        # rewards as a function of the answer (binary), or arbitrary per sample (pool-mean per answer)
        rewards = (answers == 0).double() if binary else torch.rand(ids.shape, generator=gen, dtype=torch.float64)
        got = ik.maj_at_k(answers, rewards, ids, k)
        want = []
        for g in sorted(set(ids.tolist())):
            idx = (ids == g).nonzero().flatten()
            want.append(ref.maj_at_k(answers[idx].tolist(), rewards[idx].tolist(), k))
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-13)


def test_maj_at_k_edge_cases():
    answers = torch.tensor([3, 3, 1, 2, 2, 2])
    correct = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    assert ik.maj_at_k(answers, correct, 6, 1).item() == pytest.approx(2 / 6, abs=1e-15)  # maj@1 = mean
    assert ik.maj_at_k(answers, correct, 6, 6).item() == 0.0  # the full vote picks answer 2
    # all different answers: every vote is a k-way tie -> the mean reward, for every k
    many = torch.arange(10)
    r = torch.rand(10, dtype=torch.float64)
    for k in (1, 4, 10):
        assert ik.maj_at_k(many, r, 10, k).item() == pytest.approx(r.mean().item(), abs=1e-14)


def _maj_closed_form(counts, rewards, k):
    """maj@k for 2 or 3 distinct answers, straight from the multivariate hypergeometric law: sum over
    the votes (x, y, z) of each answer, x + y + z = k, of C(a, x) C(b, y) C(c, z) / C(n, k) times the
    mean reward of the answers tied at the top. Exact rationals; shares nothing with the DP."""
    counts = list(counts) + [0] * (3 - len(counts))
    rewards = [Fraction(r) for r in rewards] + [Fraction(0)] * (3 - len(rewards))
    a, b, c = counts
    total = Fraction(0)
    for x in range(min(a, k) + 1):
        for y in range(min(b, k - x) + 1):
            z = k - x - y
            if z > c:
                continue
            votes = (x, y, z)
            top = max(votes)
            tied = [rewards[i] for i in range(3) if votes[i] == top and counts[i] > 0]
            ways = math.comb(a, x) * math.comb(b, y) * math.comb(c, z)
            total += ways * sum(tied, Fraction(0)) / len(tied)
    return total / math.comb(a + b + c, k)


@pytest.mark.parametrize("counts, rewards, k", [
    ((1400, 1000, 600), (1.0, 0.0, 0.5), 101),
    ((1400, 1000, 600), (0.0, 1.0, 0.25), 100),  # even k: two- and three-way ties
    ((30, 31), (1.0, 0.0), 60),
    ((50000, 49000), (1.0, 0.0), 64),  # large n, few distinct answers: fast
])
def test_maj_at_k_large_problem_is_exact_and_fast_enough(counts, rewards, k):
    answers = torch.repeat_interleave(torch.tensor([11, -4, 7][:len(counts)]), torch.tensor(counts))
    per_sample = torch.repeat_interleave(torch.tensor(rewards, dtype=torch.float64), torch.tensor(counts))
    perm = torch.randperm(answers.numel(), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    got = ik.maj_at_k(answers[perm], per_sample[perm], answers.numel(), k).item()
    assert time.perf_counter() - start < 10
    assert got == pytest.approx(float(_maj_closed_form(counts, rewards, k)), rel=1e-12, abs=1e-12)


def test_maj_at_k_many_distinct_answers_by_symmetry():
    # 20 answers with 4 samples each: the answers are exchangeable, so each wins the k = 16 vote
    # (ties broken uniformly) with probability 1/20 and maj@k is the mean of the answers' rewards.
    gen = torch.Generator().manual_seed(2)
    per_answer = torch.rand(20, generator=gen, dtype=torch.float64)
    answers = torch.arange(20).repeat_interleave(4)
    perm = torch.randperm(80, generator=gen)
    got = ik.maj_at_k(answers[perm], per_answer[answers][perm], 80, 16).item()
    assert got == pytest.approx(per_answer.mean().item(), rel=1e-12)
    # unequal counts break the symmetry: the same answers with one answer doubled must differ
    lop = torch.cat([answers, torch.zeros(4, dtype=torch.int64)])
    assert ik.maj_at_k(lop, per_answer[lop], 84, 16).item() != pytest.approx(per_answer.mean().item(), rel=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: ik.pass_at_k(2, 4, 0), r"k must be >= 1, got k=0"),
    (lambda: ik.pass_at_k(2, 4, 5), r"num_samples must be >= k=5"),
    (lambda: ik.pass_at_k(5, 4, 2), r"num_correct must lie in \[0, num_samples\]"),
    (lambda: ik.pass_at_k(torch.tensor([1.0]), 4, 2), r"num_correct must be an integer tensor"),
    (lambda: ik.group_pass_at_k(torch.tensor([0.0, 0.5]), 2, 1), r"correct must hold only 0/1"),
    (lambda: ik.group_pass_at_k(torch.ones(5, dtype=torch.bool), 2, 1), r"groups=2 does not divide the 5 samples"),
    (lambda: ik.maj_at_k(torch.zeros(4, dtype=torch.int64), torch.ones(4), 2, 3), r"k=3 is larger than the smallest"),
    (lambda: ik.maj_at_k(torch.zeros(4, dtype=torch.int64), torch.ones(3), 2, 1), r"correct must have shape \(4,\)"),
    (lambda: ik.maj_at_k(torch.zeros(4), torch.ones(4), 2, 1), r"answers must be an integer tensor"),
    (lambda: ik.maj_at_k(torch.zeros(4, dtype=torch.int64), torch.tensor([1.0, float("nan"), 0, 0]), 2, 1),
     r"correct must be finite"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()

"""group_advantages and length_penalized_rewards: worked examples, brute force over k-subsets,
identities, every backend against the float64 reference, and bad input.

Exact unbiasedness over whole policies is in test_advantages_unbiased.py.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

import ia_kernels as ik
from ia_kernels.reference import advantages as ref

BACKENDS = ["torch", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ESTIMATORS = ["reinforce", "rloo", "grpo", "dr_grpo", "passk", "passk_chen", "majority"]


def _device(backend):
    return "cuda" if backend == "cuda" else "cpu"


def _adv(rewards, groups, backend, **kw):
    dev = _device(backend)
    if isinstance(groups, torch.Tensor):
        groups = groups.to(dev)
    if kw.get("answers") is not None:
        kw["answers"] = kw["answers"].to(dev)
    return ik.group_advantages(rewards.to(dev), groups, backend=backend, **kw).cpu()


# ---- worked examples (docs/design.md) ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_design_worked_examples(backend):
    r = torch.tensor([1.0, 0, 0, 1], dtype=torch.float64)
    torch.testing.assert_close(_adv(r, 4, backend, estimator="passk", k=2, variant="s"),
                               torch.tensor([1 / 2, 1 / 3, 1 / 3, 1 / 2], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(_adv(r, 4, backend, estimator="passk", k=2),
                               torch.tensor([1 / 3, 0, 0, 1 / 3], dtype=torch.float64), rtol=0, atol=1e-15)
    # Tang: n == k == 4, one correct sample carries the whole objective.
    r1 = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(_adv(r1, 4, backend, estimator="passk", k=4),
                               torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), rtol=0, atol=0)
    dev = _device(backend)
    lp = ik.length_penalized_rewards(torch.tensor([1, 0, 0, 1], device=dev), torch.tensor([400, 900, 700, 600], device=dev),
                                     4, alpha=0.1, backend=backend).cpu()
    torch.testing.assert_close(lp, torch.tensor([0.97311, 0, 0, 0.92689]), rtol=0, atol=6e-6)


def test_codex_pass_at_k_worked_example():
    assert ik.pass_at_k(2, 4, 2).item() == pytest.approx(5 / 6, abs=1e-15)
    # PKPO: sum_i s_i = k * pass@k on the worked example (1/2+1/3+1/3+1/2 = 2 * 5/6).
    s = ik.group_advantages(torch.tensor([1.0, 0, 0, 1], dtype=torch.float64), 4, estimator="passk", k=2, variant="s")
    assert s.sum().item() == pytest.approx(2 * 5 / 6, abs=1e-15)


# ---- brute force over k-subsets -----------------------------------------------------------------

def _random_groups(gen, binary, sizes):
    rewards, ids, cases = [], [], []
    for g, n in enumerate(sizes):
        r = (torch.rand(n, generator=gen) < 0.5).double() if binary else torch.rand(n, generator=gen, dtype=torch.float64)
        if not binary and n > 2:
            r[1] = r[0]  # a tie: the sorted formulas must not depend on the order of equal rewards
        rewards.append(r)
        ids += [g] * n
        cases.append(r.tolist())
    return torch.cat(rewards), torch.tensor(ids), cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "continuous"])
@pytest.mark.parametrize("variant", ["s", "loo", "loo-1"])
def test_passk_matches_subset_enumeration(backend, binary, variant):
    gen = torch.Generator().manual_seed(7 + binary)
    for k in range(1, 9):
        # Every n from k (k+1 for loo) to 8, three random groups each, shuffled together.
        sizes = [n for n in range(k + (variant == "loo"), 9) for _ in range(3)]
        if not sizes:
            continue
        r, ids, _ = _random_groups(gen, binary, sizes)
        perm = torch.randperm(r.numel(), generator=gen)
        r, ids = r[perm], ids[perm]
        got = _adv(r, ids, backend, estimator="passk", k=k, variant=variant)
        want = torch.empty_like(r)
        for g in range(len(sizes)):
            idx = (ids == g).nonzero().flatten()
            want[idx] = torch.tensor(ref.passk_by_enumeration(r[idx].tolist(), k, variant), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"k={k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_passk_chen_matches_bootstrap_enumeration(backend):
    gen = torch.Generator().manual_seed(3)
    for k in range(1, 8):
        sizes = [n for n in range(k, 9) for _ in range(3)]
        r, ids, cases = _random_groups(gen, True, sizes)
        got = _adv(r, ids, backend, estimator="passk_chen", k=k)
        want = torch.tensor([a for case in cases for a in ref.passk_chen_by_enumeration(case, k)], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"k={k}")


def _rho(values, m):
    """E[max of m] estimated from `values`: the mean over every m-subset of its max (0 for m = 0)."""
    if m == 0:
        return Fraction(0)
    subsets = list(itertools.combinations(values, m))
    return sum((max(I) for I in subsets), Fraction(0)) / len(subsets)


def _passk_from_the_api_definitions(rewards, k, variant):
    """group_advantages' documented definitions, by enumeration written here (not the reference's
    formulation): s_i = (1/C(n,k)) sum over the k-subsets I that hold i of max_I r;
    "loo" = s_i - k/(n-1) rho(r without i, k); "loo-1" = s_i - (k/n) rho(r without i, k-1), and
    at k = 1 PKPO's leave-one-out mean s_i - (1/n) rho(r without i, 1) (RLOO / n); "centred" =
    loo-1 minus its group mean."""
    r = [Fraction(x) for x in rewards]
    n = len(r)
    out = []
    for i in range(n):
        with_i = [I for I in itertools.combinations(range(n), k) if i in I]
        s_i = sum((max(r[j] for j in I) for I in with_i), Fraction(0)) / math.comb(n, k)
        rest = r[:i] + r[i + 1:]
        if variant == "s":
            out.append(s_i)
        elif variant == "loo":
            out.append(s_i - Fraction(k, n - 1) * _rho(rest, k))
        else:
            m = 1 if k == 1 else k - 1
            out.append(s_i - Fraction(k, n) * _rho(rest, m) if rest else s_i)
    if variant == "centred":
        mean = sum(out, Fraction(0)) / n
        out = [x - mean for x in out]
    return [float(x) for x in out]


def test_reference_closed_form_matches_enumeration():
    # Both of the reference's forms (exact-binomial closed form, subset enumeration of PKPO's
    # definitions) against the API's definitions enumerated independently in this file.
    gen = torch.Generator().manual_seed(11)
    for n in range(2, 8):
        for k in range(1, n + 1):
            r = torch.rand(n, generator=gen, dtype=torch.float64)
            if n > 2:
                r[2] = r[0]  # a tie
            for variant in ["s", "loo", "loo-1"] if k < n else ["s", "loo-1"]:
                want = _passk_from_the_api_definitions(r.tolist(), k, variant)
                closed = ref.group_advantages(r, n, estimator="passk", k=k, variant=variant)
                assert closed.tolist() == pytest.approx(want, rel=0, abs=1e-15), (n, k, variant)
                assert ref.passk_by_enumeration(r.tolist(), k, variant) == pytest.approx(want, rel=0, abs=1e-15)


# ---- identities --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_pkpo_s_sums_to_k_times_rho(backend):
    gen = torch.Generator().manual_seed(5)
    for n, k in [(5, 1), (5, 3), (9, 4), (16, 8), (40, 7)]:
        r = torch.rand(n, generator=gen, dtype=torch.float64)
        s = _adv(r, n, backend, estimator="passk", k=k, variant="s")
        rho = float(ref.unbiased_max_at_k([ref.Fraction(x) for x in r.tolist()], k))
        assert s.sum().item() == pytest.approx(k * rho, abs=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tang_leave_one_out_of_the_mean_is_rloo_over_k(backend):
    r = torch.rand(6, dtype=torch.float64)
    tang = ref.leave_one_out(lambda xs: sum(xs) / len(xs), r.tolist())  # f = mean reward of the k = n samples
    rloo = _adv(r, 6, backend, estimator="rloo")
    torch.testing.assert_close(torch.tensor(tang, dtype=torch.float64), rloo / 6, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_passk_with_n_equal_k_is_tangs_max_minus_max(backend):
    r = torch.rand(7, dtype=torch.float64)
    want = torch.tensor([r.max() - torch.cat([r[:i], r[i + 1:]]).max() for i in range(7)], dtype=torch.float64)
    torch.testing.assert_close(_adv(r, 7, backend, estimator="passk", k=7), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chen_is_centred_scaled_pkpo_s(backend):
    n, k, eps = 10, 3, 1e-6
    r = (torch.rand(n, dtype=torch.float64) < 0.3).double()
    r[0], r[1] = 1.0, 0.0
    s = _adv(r, n, backend, estimator="passk", k=k, variant="s")
    rho = ik.pass_at_k(int(r.sum()), n, k).item()
    want = (n / k) * (s - s.mean()) / (math.sqrt(rho * (1 - rho)) + eps)
    torch.testing.assert_close(_adv(r, n, backend, estimator="passk_chen", k=k, eps=eps), want, rtol=1e-12, atol=1e-12)


# ---- every backend against the float64 reference, any group order and sizes ---------------------

def _case(estimator, gen, n_groups=9, min_size=1, max_size=12):
    sizes = torch.randint(min_size, max_size + 1, (n_groups,), generator=gen)
    if estimator == "majority":
        sizes[:] = sizes[0]
    ids = torch.repeat_interleave(torch.randint(-50, 50, (1,), generator=gen) + 7 * torch.arange(n_groups), sizes)
    ids = ids[torch.randperm(ids.numel(), generator=gen)]  # interleaved groups, arbitrary ids
    r = torch.rand(ids.numel(), generator=gen, dtype=torch.float64)
    if estimator == "passk_chen":
        r = (r < 0.4).double()
    answers = torch.randint(0, 4, ids.shape, generator=gen) if estimator == "majority" else None
    k = {"passk": int(sizes.min()) // 2 + 1, "passk_chen": int(sizes.min())}.get(estimator)
    return r, ids, answers, k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_backends_match_reference_on_shuffled_group_ids(backend, estimator):
    gen = torch.Generator().manual_seed(hash(estimator) % 1000)
    for trial in range(3):
        r, ids, answers, k = _case(estimator, gen, min_size=2 if estimator == "passk" else 1)
        kw = dict(estimator=estimator, k=k, answers=answers)
        want = ref.group_advantages(r, ids, **kw)
        torch.testing.assert_close(_adv(r, ids, backend, **kw), want, rtol=1e-12, atol=1e-12)
        # float32 rewards: float32 out, computed in float64 inside
        got32 = _adv(r.float(), ids, backend, **kw)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), ref.group_advantages(r.float().double(), ids, **kw),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_groups_take_the_heapsort_path(backend):
    # Groups of 45 > 32 samples: the native kernels sort them by heapsort instead of the rank sort
    # (csrc/include/ia/advantages.h, sort_order), and the many ties test its order-invariance.
    gen = torch.Generator().manual_seed(2)
    r = (torch.randint(0, 9, (2 * 45,), generator=gen) / 8.0).double()  # many ties
    answers = torch.randint(0, 6, r.shape, generator=gen)
    for kw in [dict(estimator="passk", k=6), dict(estimator="passk", k=45), dict(estimator="majority", answers=answers)]:
        torch.testing.assert_close(_adv(r, 45, backend, **kw), ref.group_advantages(r, 45, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_rewards_give_float32(backend):
    r = torch.tensor([0.5, 0.25, 1.0, 0.0, 0.75, 0.125], dtype=torch.bfloat16)
    out = _adv(r, 3, backend, estimator="rloo")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.group_advantages(r.double(), 3, estimator="rloo"), rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_of_one_sample(backend):
    r = torch.tensor([0.3, 0.9, 0.1], dtype=torch.float64)
    for est in ["rloo", "grpo", "dr_grpo"]:
        assert _adv(r, 1, backend, estimator=est).tolist() == [0.0, 0.0, 0.0]
    assert _adv(r, 1, backend, estimator="reinforce").tolist() == r.tolist()
    # k = n = 1: the objective is the reward itself, the leave-one-out baseline max(nothing) = 0.
    assert _adv(r, 1, backend, estimator="passk", k=1).tolist() == pytest.approx(r.tolist(), abs=1e-15)
    ids = torch.tensor([4, 4, 9])  # a group of two and a group of one
    torch.testing.assert_close(_adv(r, ids, backend, estimator="rloo"),
                               torch.tensor([0.3 - 0.9, 0.9 - 0.3, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_and_chen_with_zero_eps_on_flat_groups_give_zero(backend):
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert _adv(r, 3, backend, estimator="grpo", eps=0.0).tolist() == [0.0] * 6
    assert _adv(r, 3, backend, estimator="passk_chen", k=2, eps=0.0).tolist() == [0.0] * 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_majority_ties_and_leave_one_out(backend):
    # answers 7,7,3,3,5: tie between 7 (reward 1) and 3 (reward 0): f = 1/2.
    # without a 7: 3 wins (0) -> A = 1/2; without a 3: 7 wins (1) -> A = -1/2; without 5: f unchanged.
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    answers = torch.tensor([7, 7, 3, 3, 5])
    got = _adv(r, 5, backend, estimator="majority", answers=answers)
    assert got.tolist() == pytest.approx([0.5, 0.5, -0.5, -0.5, 0.0], abs=1e-15)
    # a clear winner 7 (3 votes) over 3 (2): removing a 7 makes a 7/3 tie -> f drops from 1 to 1/2.
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    answers = torch.tensor([7, 7, 7, 3, 3])
    got = _adv(r, 5, backend, estimator="majority", answers=answers, k=5)
    assert got.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_penalized_rewards_match_reference(backend):
    gen = torch.Generator().manual_seed(4)
    sizes = torch.randint(1, 9, (11,), generator=gen)
    ids = torch.repeat_interleave(torch.arange(11) * 3 - 5, sizes)
    perm = torch.randperm(ids.numel(), generator=gen)
    ids = ids[perm]
    correct = torch.rand(ids.shape, generator=gen) < 0.6
    lengths = torch.randint(10, 2000, ids.shape, generator=gen)
    dev = _device(backend)
    for alpha in [0.0, 0.2, 1.0]:
        want = ref.length_penalized_rewards(correct, lengths, ids, alpha=alpha)
        got = ik.length_penalized_rewards(correct.to(dev), lengths.to(dev), ids.to(dev), alpha=alpha, backend=backend)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=1e-6)
        got64 = ik.length_penalized_rewards(correct.to(dev).float(), lengths.to(dev).double(), ids.to(dev), alpha=alpha,
                                            backend=backend)
        assert got64.dtype == torch.float64
        torch.testing.assert_close(got64.cpu(), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    dev = _device(backend)
    empty = torch.zeros(0, dtype=torch.float64, device=dev)
    assert ik.group_advantages(empty, 4, estimator="rloo", backend=backend).numel() == 0
    ids = torch.zeros(0, dtype=torch.int64, device=dev)
    assert ik.group_advantages(empty, ids, estimator="passk", k=2, backend=backend).numel() == 0


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad,estimator,match", [
    (float("nan"), "rloo", r"rewards must be finite.*index 5"),
    (float("inf"), "grpo", r"rewards must be finite.*index 5"),
    (float("-inf"), "passk", r"rewards must be finite.*index 5"),
    (0.5, "passk_chen", r"rewards must be 0 or 1 for estimator='passk_chen'.*found 0.5 at index 5"),
])
def test_bad_rewards_name_the_first_offending_sample(backend, bad, estimator, match):
    r = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    r[5] = bad
    r[7] = bad  # a later one: the message names the first
    ids = torch.tensor([3, 1, 3, 1, 3, 1, 3, 1])  # shuffled groups: indices still refer to the input
    kw = {"k": 2} if estimator.startswith("passk") else {}
    with pytest.raises(ValueError, match=match):
        _adv(r, ids, backend, estimator=estimator, **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=3, estimator="rloo"), r"groups=3 does not divide the 8 rewards"),
    (dict(groups=0, estimator="rloo"), r"group size\) must be >= 1"),
    (dict(groups=torch.zeros(7, dtype=torch.int64), estimator="rloo"), r"groups must have shape \(8,\)"),
    (dict(groups=torch.zeros(8), estimator="rloo"), r"groups must be an integer tensor"),
    (dict(groups=4.0, estimator="rloo"), r"groups must be an int"),
    (dict(groups=4, estimator="ppo"), r"estimator must be one of"),
    (dict(groups=4, estimator="passk"), r"estimator='passk' needs k"),
    (dict(groups=4, estimator="passk", k=5), r"k=5 is larger than the smallest group \(4 samples\)"),
    (dict(groups=4, estimator="passk", k=0), r"k must be >= 1, got k=0"),
    (dict(groups=4, estimator="passk", k=2.0), r"k must be an int"),
    (dict(groups=4, estimator="passk", k=4, variant="loo"), r"variant='loo' needs k < n"),
    (dict(groups=4, estimator="passk", k=2, variant="loo2"), r"variant must be one of"),
    (dict(groups=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]), estimator="passk_chen", k=4),
     r"k=4 is larger than the smallest group \(3 samples\)"),
    (dict(groups=4, estimator="rloo", k=2), r"k is only used by estimators passk, passk_chen, majority"),
    (dict(groups=4, estimator="majority"), r"estimator='majority' needs answers"),
    (dict(groups=4, estimator="majority", answers=torch.zeros(7, dtype=torch.int64)), r"answers must have shape \(8,\)"),
    (dict(groups=4, estimator="majority", answers=torch.zeros(8)), r"answers must be an integer tensor"),
    (dict(groups=4, estimator="majority", answers=torch.zeros(8, dtype=torch.int64), k=3),
     r"estimator='majority' needs k == the group size"),
    (dict(groups=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]), estimator="majority", answers=torch.zeros(8, dtype=torch.int64)),
     r"needs every group to have k samples \(n == k\); group sizes range from 3 to 5"),
    (dict(groups=4, estimator="rloo", answers=torch.zeros(8, dtype=torch.int64)), r"answers is only used by estimator='majority'"),
    (dict(groups=4, estimator="grpo", eps=-1.0), r"eps must be finite and >= 0"),
    (dict(groups=4, estimator="rloo", backend="triton"), r"group_advantages has no 'triton' backend"),
    (dict(groups=4, estimator="rloo", backend="cuda"), r"backend 'cuda' \(backend\) cannot run here"),
])
def test_bad_arguments(kwargs, match):
    r = torch.rand(8, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(r, **kwargs)


def test_bad_reward_tensors():
    with pytest.raises(ValueError, match=r"rewards must be a floating-point tensor"):
        ik.group_advantages(torch.ones(4, dtype=torch.int64), 2, estimator="rloo")
    with pytest.raises(ValueError, match=r"rewards must be a 1-D tensor \[n\]"):
        ik.group_advantages(torch.ones(2, 4), 2, estimator="rloo")


@pytest.mark.parametrize("kwargs,match", [
    (dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.ones(5), groups=2, alpha=0.1),
     r"lengths must have shape \(4,\)"),
    (dict(correct=torch.tensor([1, 0, 2, 1]), lengths=torch.ones(4), groups=2, alpha=0.1), r"correct must hold only 0/1"),
    (dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.ones(4), groups=3, alpha=0.1),
     r"groups=3 does not divide the 4 responses"),
    (dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.ones(4), groups=2, alpha=1.5), r"alpha must lie in \[0, 1\]"),
    (dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.tensor([1.0, float("nan"), 2, 3]), groups=2, alpha=0.1),
     r"lengths must be finite"),
    (dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.ones(4), groups=torch.zeros(3, dtype=torch.int64),
          alpha=0.1), r"groups must have shape \(4,\)"),
])
def test_length_penalized_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ik.length_penalized_rewards(**kwargs)


# ---- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cuda_matches_torch_backend_at_scale(estimator):
    gen = torch.Generator().manual_seed(9)
    r, ids, answers, k = _case(estimator, gen, n_groups=3000, min_size=2, max_size=70)
    kw = dict(estimator=estimator, k=k, answers=answers)
    torch.testing.assert_close(_adv(r, ids, "cuda", **kw), _adv(r, ids, "torch", **kw), rtol=1e-10, atol=1e-10)


def test_all_subsets_sum_check_for_the_brute_force_reference_itself():
    # The enumeration references against values derived by hand from the definitions, on
    # r = [1, 0, 0, 1], k = 2: the C(4, 2) = 6 pairs have maxima {0,1}:1 {0,2}:1 {0,3}:1 {1,2}:0
    # {1,3}:1 {2,3}:1, so pass@2 = 5/6.
    #   s_i = (1/6) * sum of the maxima of the 3 pairs holding i: s_0 = 3/6, s_1 = (1+0+1)/6 = 1/3.
    #   loo-1: (1/6) sum over pairs I holding i of (max_I - max_{I without i}):
    #          i=0: (1-0) + (1-0) + (1-1) = 2 -> 1/3;  i=1: (1-1) + (0-0) + (1-1) = 0.
    #   loo:   s_i - (k/(n-1)) rho(r without i, 2): without 0, r = [0,0,1], pairs' maxima 0,1,1 ->
    #          rho = 2/3 and A_0 = 1/2 - (2/3)(2/3) = 1/18; without 1, r = [1,0,1], every pair has
    #          max 1 -> A_1 = 1/3 - 2/3 = -1/3.
    #   Chen (eps = 0): the pair rewards have mean 5/6 and population std sqrt(5)/6; sample 0's pairs
    #          all have 1 -> (1/6)/(sqrt(5)/6) = 1/sqrt(5); sample 1's: (1/6 - 5/6 + 1/6)/3 / (sqrt(5)/6)
    #          = -1/sqrt(5).
    r = [1, 0, 0, 1]
    assert ref.passk_by_enumeration(r, 2, "s") == [1 / 2, 1 / 3, 1 / 3, 1 / 2]
    assert ref.passk_by_enumeration(r, 2, "loo-1") == pytest.approx([1 / 3, 0, 0, 1 / 3], rel=0, abs=1e-16)
    assert ref.passk_by_enumeration(r, 2, "loo") == pytest.approx([1 / 18, -1 / 3, -1 / 3, 1 / 18], rel=0, abs=1e-16)
    chen = ref.passk_chen_by_enumeration(r, 2, eps=0.0)
    assert chen == pytest.approx([5 ** -0.5, -(5 ** -0.5), -(5 ** -0.5), 5 ** -0.5], rel=1e-15)
    assert float(ref.unbiased_max_at_k([Fraction(x) for x in r], 2)) == 5 / 6
    assert sum(ref.passk_by_enumeration(r, 2, "s")) == pytest.approx(2 * 5 / 6, abs=1e-15)  # sum s_i = k pass@k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["s", "loo", "loo-1", "centred"])
def test_passk_takes_any_real_reward(backend, variant):
    # PKPO's objective E[max of k rewards] is defined for any reals (these used to be refused).
    gen = torch.Generator().manual_seed(5)
    for n, k in ((5, 2), (6, 3), (4, 4), (7, 1)):
        if variant == "loo" and k >= n:
            continue
        r = torch.randn(n, generator=gen, dtype=torch.float64) * 3
        got = _adv(r, n, backend, estimator="passk", k=k, variant=variant)
        want = torch.tensor(_passk_from_the_api_definitions(r.tolist(), k, variant), dtype=torch.float64)
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-12, atol=1e-12, msg=f"n={n} k={k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_passk_with_k_1_is_rloo_on_the_s_scale(backend):
    r = torch.tensor([1.0, 0.0, 0.5, 0.25, 1.0, 0.0], dtype=torch.float64)
    got = _adv(r, 3, backend, estimator="passk", k=1)
    rloo = _adv(r, 3, backend, estimator="rloo")
    torch.testing.assert_close(got.cpu().double(), rloo.cpu().double() / 3, rtol=1e-13, atol=1e-13)



@pytest.mark.parametrize("backend", BACKENDS)
def test_length_penalty_scores_unfinished_responses_zero_and_leaves_them_out(backend):
    # Arora & Zanette's reference code: a response cut off at the token limit (no EOS) gets 0 and
    # does not count in its prompt's mean and std of correct lengths.
    dev = _device(backend)
    correct = torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool)
    lengths = torch.tensor([10.0, 30.0, 64.0, 5.0, 20.0, 64.0], dtype=torch.float64)
    finished = torch.tensor([True, True, False, True, True, False])
    got = ik.length_penalized_rewards(correct.to(dev), lengths.to(dev), 3, alpha=0.2, finished=finished.to(dev),
                                      backend=backend).cpu()
    # Group 0: correct and finished are lengths 10, 30: mu 20, sd 10. Group 1: only length 20 (sd 0).
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    want = torch.tensor([1 - 0.2 * sig(-10 / (10 + 1e-7)), 1 - 0.2 * sig(10 / (10 + 1e-7)), 0.0, 0.0,
                         1 - 0.2 * sig(0.0), 0.0], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="finished must be a bool tensor"):
        ik.length_penalized_rewards(correct, lengths, 3, alpha=0.2, finished=torch.full((6,), 0.5))
    with pytest.raises(ValueError, match=r"finished must have shape \(6,\)"):
        ik.length_penalized_rewards(correct, lengths, 3, alpha=0.2, finished=torch.ones(5, dtype=torch.bool))

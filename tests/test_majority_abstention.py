"""The majority vote's rule for a sample without a final answer (answer id ia_kernels.NO_ANSWER, -1):
it abstains. The vote is among the answering samples, ties broken uniformly; when none answers, the
vote is wrong. maj_at_k and group_advantages(estimator="majority") follow it; both are checked here
against brute-force enumeration over k-subsets (ia_kernels.reference), and the estimator's expected
update against the exact gradient of maj@k over a whole policy with an output that gives no answer.

Before this rule, the answers without an answer formed one always-wrong candidate, so two of them
outvoted one correct answer; the first tests below fail on that code.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

import ia_kernels as ik
from ia_kernels.reference import advantages as ref

BACKENDS = ["torch", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NONE = ik.NO_ANSWER


def _adv(rewards, groups, backend, **kw):
    dev = "cuda" if backend == "cuda" else "cpu"
    if isinstance(groups, torch.Tensor):
        groups = groups.to(dev)
    kw["answers"] = kw["answers"].to(dev)
    return ik.group_advantages(rewards.to(dev), groups, backend=backend, estimator="majority", **kw).cpu()


def test_no_answer_is_minus_one():
    assert NONE == -1 == ref.NO_ANSWER


def test_two_responses_without_an_answer_do_not_outvote_a_correct_one():
    answers = torch.tensor([NONE, NONE, 7])
    correct = torch.tensor([False, False, True])
    assert ik.maj_at_k(answers, correct, 3, 3).item() == 1.0  # the old rule: 0 (the "no answer" pair won)
    # k = 2: the subsets {none, none} (1 of 3) have no vote; the others vote 7
    assert ik.maj_at_k(answers, correct, 3, 2).item() == pytest.approx(2 / 3, abs=1e-15)
    assert ik.maj_at_k(answers, correct, 3, 1).item() == pytest.approx(1 / 3, abs=1e-15)
    # nobody answers: every vote is wrong, whatever the rewards say
    assert ik.maj_at_k(torch.full((4,), NONE), torch.ones(4), 4, 2).item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_majority_advantages_of_abstaining_samples(backend):
    r = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # f(all) = 1 (7 alone votes); without 7 nobody votes (0); without an abstainer f is unchanged
    got = _adv(r, 3, backend, answers=torch.tensor([NONE, NONE, 7]))
    assert got.tolist() == [0.0, 0.0, 1.0]  # the old rule gave [-0.5, -0.5, 0]
    # a wrong answer against a right one, plus an abstainer: a tie broken uniformly (f = 1/2)
    r = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    got = _adv(r, 3, backend, answers=torch.tensor([4, 5, NONE]))
    assert got.tolist() == pytest.approx([0.5, -0.5, 0.0], abs=1e-15)
    # nobody answers: 0 throughout
    assert _adv(torch.ones(4, dtype=torch.float64), 4, backend, answers=torch.full((4,), NONE)).tolist() == [0.0] * 4


def _brute_force_advantages(rewards: list[float], answers: list[int]) -> list[float]:
    """A_i = f(all) - f(all but i) with f(S) = the vote of S, from the reference's k-subset
    enumeration (one subset of size |S|), 0 for the empty set."""
    def f(members):
        if not members:
            return 0.0
        return ref.maj_at_k([answers[j] for j in members], [rewards[j] for j in members], len(members))

    everyone = list(range(len(rewards)))
    whole = f(everyone)
    return [whole - f([j for j in everyone if j != i]) for i in everyone]


@pytest.mark.parametrize("backend", BACKENDS)
def test_majority_advantages_match_enumeration(backend):
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 5, 8):
        groups = 12
        answers = torch.randint(-1, 3, (groups * n,), generator=gen)  # about a quarter abstain
        answers[:n] = NONE  # one group where nobody answers
        rewards = torch.rand(groups * n, generator=gen, dtype=torch.float64).round()
        got = _adv(rewards, n, backend, answers=answers)
        want = []
        for g in range(groups):
            sl = slice(g * n, (g + 1) * n)
            want += _brute_force_advantages(rewards[sl].tolist(), answers[sl].tolist())
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(got, ref.group_advantages(rewards, n, estimator="majority", answers=answers),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_majority_abstention_with_shuffled_group_ids_and_float32(backend):
    gen = torch.Generator().manual_seed(5)
    n, groups = 6, 7
    ids = torch.arange(groups).repeat_interleave(n) * 3 - 4
    ids = ids[torch.randperm(ids.numel(), generator=gen)]
    answers = torch.randint(-1, 2, ids.shape, generator=gen)
    rewards = torch.rand(ids.numel(), generator=gen)
    got = _adv(rewards, ids, backend, answers=answers)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.group_advantages(rewards.double(), ids, estimator="majority",
                                                                  answers=answers), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64])
def test_minus_one_abstains_in_every_signed_dtype_and_255_is_an_answer(dtype):
    r = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    got = ik.group_advantages(r, 3, estimator="majority", answers=torch.tensor([-1, -1, 7], dtype=dtype))
    assert got.tolist() == [0.0, 0.0, 1.0]
    assert ik.maj_at_k(torch.tensor([-1, -1, 7], dtype=dtype), r, 3, 3).item() == 1.0
    # uint8 has no -1: 255 is an ordinary answer id (torch would compare it equal to -1 if asked naively)
    u = torch.tensor([255, 255, 7], dtype=torch.uint8)
    # (two wrong votes for 255 win; without one of them 255 and 7 tie: A = 0 - 1/2)
    assert ik.group_advantages(r, 3, estimator="majority", answers=u).tolist() == [-0.5, -0.5, 0.0]
    assert ik.maj_at_k(u, r, 3, 3).item() == 0.0
    # other negative ids are answers too
    assert ik.maj_at_k(torch.tensor([-2, -2, 7]), r, 3, 3).item() == 0.0


def test_maj_at_k_with_abstentions_matches_enumeration():
    gen = torch.Generator().manual_seed(11)
    for n in (1, 2, 4, 7, 9):
        for k in sorted({1, 2, (n + 1) // 2, n}):
            if k > n:
                continue
            problems = 10
            answers = torch.randint(-1, 3, (problems * n,), generator=gen)
            binary = torch.rand(problems * n, generator=gen) < 0.5
            rewards = torch.where(answers == 0, 1.0, 0.0).double() if n % 2 else binary.double()
            got = ik.maj_at_k(answers, rewards, n, k)
            want = [ref.maj_at_k(answers[g * n:(g + 1) * n].tolist(), rewards[g * n:(g + 1) * n].tolist(), k)
                    for g in range(problems)]
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-13)


def test_maj_at_k_abstention_in_the_wide_problem_path():
    # many samples: 30 abstain, 25 say 1 (right), 26 say 2 (wrong); k = 9, closed form by enumeration
    # of the multivariate hypergeometric law over (abstaining, right, wrong) votes
    from math import comb

    counts = {NONE: 30, 1: 25, 2: 26}
    answers = torch.cat([torch.full((c,), a) for a, c in counts.items()])
    rewards = (answers == 1).double()
    perm = torch.randperm(answers.numel(), generator=torch.Generator().manual_seed(0))
    n, k = answers.numel(), 9
    want = Fraction(0)
    for x in range(k + 1):
        for y in range(k + 1 - x):
            z = k - x - y
            p = Fraction(comb(30, x) * comb(25, y) * comb(26, z), comb(n, k))
            want += p * (1 if y > z else Fraction(1, 2) if y == z and y > 0 else 0)
    assert ik.maj_at_k(answers[perm], rewards[perm], n, k).item() == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_abstaining_samples_are_checked_and_omitted_as_documented(backend):
    answers = torch.tensor([NONE, 3, 3, 4])
    with pytest.raises(ValueError, match=r"rewards must be finite: it has NaN or inf \(first at index 0: inf\)"):
        _adv(torch.tensor([float("inf"), 1.0, 1.0, 0.0]), 4, backend, answers=answers)
    # nan_policy="omit": a group with a NaN gets 0 throughout (the majority estimator needs all k);
    # the other group's abstainer still abstains
    r = torch.tensor([float("nan"), 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    two = torch.cat([answers, torch.tensor([NONE, 3, 5, 5])])
    got = _adv(r, 4, backend, answers=two, nan_policy="omit")
    want = [0.0] * 4 + _brute_force_advantages(r[4:].tolist(), two[4:].tolist())
    assert got.tolist() == pytest.approx(want, abs=1e-15)


# ---- unbiasedness over a whole policy with an output that gives no answer ------------------------

REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
ANSWERS = torch.tensor([7, 3, NONE, 5])  # output 2 gives no final answer
THETA = torch.tensor([-0.2, 0.4, 0.6, -0.5], dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_majority_estimator_is_unbiased_for_maj_at_k_with_abstentions(backend, k):
    """E[sum_i A_i grad log pi(y_i)] over every k-sample outcome equals grad maj@k, maj@k written as
    the sum over outcomes of P(outcome) times the reference's enumerated vote of that outcome."""
    outcomes = torch.tensor(list(itertools.product(range(4), repeat=k)))
    votes = torch.tensor([ref.maj_at_k(ANSWERS[y].tolist(), REWARDS[y].tolist(), k) for y in outcomes],
                         dtype=torch.float64)
    theta = THETA.clone().requires_grad_()
    maj = (torch.softmax(theta, 0)[outcomes].prod(1) * votes).sum()
    want = torch.autograd.grad(maj, theta)[0]
    p = torch.softmax(THETA, 0)
    adv = ik.group_advantages(REWARDS[outcomes].reshape(-1), k, estimator="majority", backend=backend,
                              answers=ANSWERS[outcomes].reshape(-1)).reshape(outcomes.shape)
    score = torch.nn.functional.one_hot(outcomes, 4).double() - p
    got = torch.einsum("o,oi,oim->m", p[outcomes].prod(1), adv, score)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)

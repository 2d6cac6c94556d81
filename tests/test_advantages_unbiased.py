"""Exact unbiasedness of the group-advantage estimators, and of the evaluation estimators.

A policy over a handful of outputs y (each with a known reward and answer) is softmax(theta).
Every n-sample outcome (y_1..y_n) is enumerated with its probability, so
    E[sum_i A_i grad log pi(y_i)] = sum_outcomes P(outcome) sum_i A_i (onehot(y_i) - pi)
is computed exactly (no Monte Carlo), and compared with the gradient of the objective J(theta),
written in closed form and differentiated by autograd, all in float64, to 1e-10.
Each outcome is one group of the batch, so one call of group_advantages covers them all.
"""

from __future__ import annotations

import itertools
import sys
from fractions import Fraction

import pytest
import torch

import ia_kernels as ik
from ia_kernels.reference import advantages as ref

BACKENDS = ["torch", "cpu"]
# Four outputs: rewards (one of them fully correct, two partial, tied rewards on purpose) and the
# final answers they carry (outputs 0 and 2 give the same answer: the answer's reward is theirs).
REWARDS = torch.tensor([1.0, 0.25, 1.0, 0.0], dtype=torch.float64)
BINARY = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
ANSWERS = torch.tensor([7, 3, 7, 5])
THETA = torch.tensor([-0.7, 0.4, -1.1, 0.9], dtype=torch.float64)


def _outcomes(n: int, m: int = 4) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(m), repeat=n)))  # [m^n, n]


def expected_estimate(backend, n, rewards, **kw) -> torch.Tensor:
    """E[sum_i A_i grad_theta log pi(y_i)] over every n-sample outcome, exactly."""
    Y = _outcomes(n)
    p = torch.softmax(THETA, 0)
    prob = p[Y].prod(1)
    if kw.get("estimator") == "majority":
        kw["answers"] = ANSWERS[Y].reshape(-1)
    adv = ik.group_advantages(rewards[Y].reshape(-1), n, backend=backend, **kw).reshape(Y.shape)
    score = torch.nn.functional.one_hot(Y, 4).double() - p  # grad log pi(y) = onehot(y) - pi
    return torch.einsum("o,oi,oim->m", prob, adv, score)


def _grad(J) -> torch.Tensor:
    theta = THETA.clone().requires_grad_()
    return torch.autograd.grad(J(torch.softmax(theta, 0)), theta)[0]


def mean_reward(p, rewards=REWARDS):
    return (p * rewards).sum()


def expected_max(k, rewards=REWARDS):
    """E[max of k iid rewards] = sum over reward levels v of v (F(v)^k - F(v-)^k), F the CDF."""
    def J(p):
        levels = torch.unique(rewards)  # ascending
        F = torch.stack([p[rewards <= v].sum() for v in levels])
        F_prev = torch.cat([F.new_zeros(1), F[:-1]])
        return (levels * (F ** k - F_prev ** k)).sum()
    return J


def expected_majority(k):
    """maj@k: E[reward of the majority answer of k samples], ties broken uniformly; the exact
    expectation over the 4^k outcomes, with f from the reference."""
    Y = _outcomes(k)
    f = torch.tensor([float(ref._majority_value(ANSWERS[y].tolist(), [Fraction(float(x)) for x in REWARDS[y]]))
                      for y in Y], dtype=torch.float64)

    def J(p):
        return (p[Y].prod(1) * f).sum()
    return J


def _direction_bias(estimate, true_grad) -> float:
    """Relative size of the part of `estimate` not along the true gradient: 0 for an estimator that is
    unbiased up to a positive scale (a learning-rate change); > 0 means the direction is biased."""
    along = (estimate @ true_grad) / (true_grad @ true_grad) * true_grad
    return float((estimate - along).norm() / estimate.norm())


# ---- unbiased estimators -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_reward_estimators(backend):
    n = 4
    g = _grad(mean_reward)
    torch.testing.assert_close(expected_estimate(backend, n, REWARDS, estimator="reinforce"), n * g, rtol=0, atol=1e-10)
    torch.testing.assert_close(expected_estimate(backend, n, REWARDS, estimator="rloo"), n * g, rtol=0, atol=1e-10)
    # dr_grpo = (n-1)/n * rloo: unbiased up to the constant n - 1.
    torch.testing.assert_close(expected_estimate(backend, n, REWARDS, estimator="dr_grpo"), (n - 1) * g, rtol=0,
                               atol=1e-10)


def test_pass_at_k_closed_form_is_the_expected_max_for_one_correct_output():
    # The binary objective with one correct output: pass@k = 1 - (1 - p)^k.
    p = torch.softmax(THETA, 0)
    assert expected_max(3, BINARY)(p).item() == pytest.approx(1 - (1 - p[0].item()) ** 3, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["s", "loo", "loo-1"])
@pytest.mark.parametrize("n,k", [(4, 1), (4, 2), (4, 3), (5, 2), (5, 4), (4, 4), (5, 5)])
@pytest.mark.parametrize("rewards", [BINARY, REWARDS], ids=["binary", "continuous"])
def test_passk_is_unbiased_for_the_expected_max(backend, variant, n, k, rewards):
    if variant == "loo" and k == n:
        pytest.skip("loo needs k < n")
    est = expected_estimate(backend, n, rewards, estimator="passk", k=k, variant=variant)
    torch.testing.assert_close(est, _grad(expected_max(k, rewards)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_majority_is_unbiased_for_maj_at_k(backend, k):
    est = expected_estimate(backend, k, REWARDS, estimator="majority")
    torch.testing.assert_close(est, _grad(expected_majority(k)), rtol=0, atol=1e-10)


# ---- biased estimators, and by how much ------------------------------------------------------------
#
# Figures measured at THETA (and THETA_2 where stated), n = 4 samples:
#   grpo (divides by the group's sample std): the expected update is not along grad E[r]: its
#       component orthogonal to the true gradient is 35% of its norm at THETA (5% at THETA_2), so
#       no learning rate fixes it. dr_grpo, the same without the std, has none.
#   Tang's centred form A_i - mean_j A_j of the pass@k leave-one-out advantages (n = k = 4): the
#       group mean includes sample i's own advantage, so it is not a valid baseline. Binary rewards:
#       the expectation is 0.84 x grad pass@4 at THETA but 1.43 x at THETA_2 (a policy-dependent
#       scale, i.e. a reweighting of prompts); continuous rewards: 8% off in norm and 7% off in
#       direction at THETA. The uncentred form matches the gradient to 1e-10.
#   passk_chen (binary pass@2): with binary rewards every estimator's expectation lies along
#       grad pass@k (only the correct outputs' total probability matters), but the scale is not
#       a constant: 2.07 x grad pass@2 at THETA, 2.32 x at THETA_2 (the std normalisation).
# The asserts only require the effects to be clearly nonzero (> 1%).

THETA_2 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)


def _scale(estimate, true_grad) -> float:
    return float((estimate @ true_grad) / (true_grad @ true_grad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_std_normalisation_is_biased(backend):
    est = expected_estimate(backend, 4, REWARDS, estimator="grpo")
    bias = _direction_bias(est, _grad(mean_reward))
    assert bias > 0.01, f"grpo's direction bias {bias:.4f}"
    # whereas the same group without the std (dr_grpo) has none:
    assert _direction_bias(expected_estimate(backend, 4, REWARDS, estimator="dr_grpo"), _grad(mean_reward)) < 1e-12


def _tang_expectations(backend, rewards, n, k):
    Y = _outcomes(n)
    p = torch.softmax(THETA, 0)
    adv = ik.group_advantages(rewards[Y].reshape(-1), n, estimator="passk", k=k, backend=backend).reshape(Y.shape)
    centred = adv - adv.mean(1, keepdim=True)
    # The API's variant="centred" is exactly this form (offered, and documented as biased).
    api = ik.group_advantages(rewards[Y].reshape(-1), n, estimator="passk", k=k, variant="centred",
                              backend=backend).reshape(Y.shape)
    torch.testing.assert_close(api, centred, rtol=0, atol=1e-12)
    score = torch.nn.functional.one_hot(Y, 4).double() - p
    prob = p[Y].prod(1)
    return torch.einsum("o,oi,oim->m", prob, adv, score), torch.einsum("o,oi,oim->m", prob, centred, score)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tang_centred_form_is_biased(backend, monkeypatch):
    n = k = 4
    g = _grad(expected_max(k, REWARDS))
    est_loo, est_centred = _tang_expectations(backend, REWARDS, n, k)
    torch.testing.assert_close(est_loo, g, rtol=0, atol=1e-10)  # the plain leave-one-out form is exact
    gap = float((est_centred - g).norm() / g.norm())
    assert gap > 0.01, f"centred form misses grad maxg@k by {gap:.4f} of its norm"
    assert _direction_bias(est_centred, g) > 0.01
    # binary rewards: along the gradient, but with a policy-dependent scale
    scales = []
    for theta in (THETA, THETA_2):
        monkeypatch.setattr(sys.modules[__name__], "THETA", theta)
        g = _grad(expected_max(k, BINARY))
        est_loo, est_centred = _tang_expectations(backend, BINARY, n, k)
        torch.testing.assert_close(est_loo, g, rtol=0, atol=1e-10)
        scales.append(_scale(est_centred, g))
    assert abs(scales[0] - scales[1]) > 0.01 and abs(scales[0] - 1) > 0.01, f"scales {scales}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_passk_chen_is_biased(backend, monkeypatch):
    scales = []
    for theta in (THETA, THETA_2):
        monkeypatch.setattr(sys.modules[__name__], "THETA", theta)
        est = expected_estimate(backend, 4, BINARY, estimator="passk_chen", k=2)
        scales.append(_scale(est, _grad(expected_max(2, BINARY))))
    assert abs(scales[0] - scales[1]) > 0.01, f"passk_chen's scale of grad pass@2 at two policies: {scales}"


# ---- the evaluation estimators are unbiased too ----------------------------------------------------

def test_pass_at_k_estimator_is_unbiased():
    n, k = 5, 3
    Y = _outcomes(n)
    p = torch.softmax(THETA, 0)
    prob = p[Y].prod(1)
    c = BINARY[Y].sum(1).to(torch.int64)
    expected = (prob * ik.pass_at_k(c, n, k)).sum()
    assert expected.item() == pytest.approx(1 - (1 - p[0].item()) ** k, abs=1e-12)
    per_sample = ik.group_pass_at_k(BINARY[Y].reshape(-1) > 0, n, k)
    assert (prob * per_sample).sum().item() == pytest.approx(expected.item(), abs=1e-14)


@pytest.mark.parametrize("n,k", [(4, 2), (5, 3), (4, 4)])
def test_maj_at_k_estimator_is_unbiased(n, k):
    Y = _outcomes(n)
    p = torch.softmax(THETA, 0)
    prob = p[Y].prod(1)
    values = ik.maj_at_k(ANSWERS[Y].reshape(-1), REWARDS[Y].reshape(-1), n, k)
    # Answer rewards are a function of the answer here (outputs 0 and 2 share answer 7 and reward 1),
    # so the sample-pool and per-subset definitions of an answer's reward agree.
    assert (prob * values).sum().item() == pytest.approx(expected_majority(k)(p).item(), abs=1e-12)

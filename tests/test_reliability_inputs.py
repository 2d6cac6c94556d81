"""No silent wrong result from a careless input: each test here failed on the code before its fix.

- Group labels are compared by value: a list of 0-d tensors (list(ids), ids.unbind()), NumPy scalars
  and mixed numeric types group as their values do; NaN labels, identity-compared objects, unhashable
  and multi-element labels are refused with a ValueError naming the index.
- A normaliser given as a tensor (num_tokens, num_sequences) gets the checks a number gets: zero,
  negative, NaN or inf is a ValueError (in the call's one host sync) or, when the caller opted out of
  that sync (ppo_loss check_finite=False), a NaN loss and NaN gradients, never a flipped sign.
- Every other scalar option accepts a one-element tensor or NumPy scalar as its value and refuses
  bool and str; every integer option outside int64 is a ValueError naming it.
- nan_policy="omit" with passk's variant="loo": a group left with k scored samples is data (advantage
  0), on every backend.
- A second backward through linear_ppo_loss gives PyTorch's own message.
"""

import math

import numpy as np
import pytest
import torch

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
ADV_BACKENDS = ["torch", "cpu"]
PPO_BACKENDS = ["torch", "cpu", TRITON]
NAN = float("nan")

# ---- group labels --------------------------------------------------------------------------------

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
IDS = torch.tensor([7, 7, 3, 3, 7, 3])


def _label_forms():
    return {
        "list(ids)": list(IDS),
        "ids.unbind()": IDS.unbind(),
        "numpy scalars": [np.int64(x) for x in IDS.tolist()],
        "mixed numeric types": [7, 7.0, np.int32(3), torch.tensor(3), np.float64(7), 3],
        "tuples of 0-d tensors": [(torch.tensor(x), "p") for x in IDS.tolist()],
        "0-d numpy arrays": [np.array(x) for x in IDS.tolist()],
    }


@pytest.mark.parametrize("backend", ADV_BACKENDS)
@pytest.mark.parametrize("form", list(_label_forms()))
def test_labels_are_compared_by_value(backend, form):
    labels = _label_forms()[form]
    want = ik.group_advantages(R, IDS, estimator="rloo", backend=backend)
    assert bool((want != 0).any())  # a grouping by identity (every sample alone) gives all zeros
    got = ik.group_advantages(R, labels, estimator="rloo", backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    lengths = torch.tensor([5.0, 9, 4, 6, 2, 8])
    want_lp = ik.length_penalized_rewards(R, lengths, IDS, alpha=0.5, backend=backend)
    got_lp = ik.length_penalized_rewards(R, lengths, _label_forms()[form], alpha=0.5, backend=backend)
    torch.testing.assert_close(got_lp, want_lp, rtol=0, atol=0)


@pytest.mark.parametrize("labels", [
    [math.nan, math.nan, 1, 1, 2, 2],
    [float("nan"), float("nan"), 1, 1, 2, 2],
    [np.nan, np.float32("nan"), 1, 1, 2, 2],
    np.array([np.nan, np.nan, 1, 1, 2, 2]),
    [torch.tensor(NAN), torch.tensor(NAN), 1, 1, 2, 2],
    [(NAN, 1), (NAN, 1), 1, 1, 2, 2],
])
def test_nan_labels_are_refused_whatever_nan_object_it_is(labels):
    with pytest.raises(ValueError, match=r"groups\[0\] is .*nan.*: a NaN label equals no label"):
        ik.group_advantages(R, labels, estimator="rloo")
    with pytest.raises(ValueError, match=r"groups\[0\] is .*nan.*: a NaN label equals no label"):
        ik.length_penalized_rewards(R, torch.ones(6), labels, alpha=0.1)


class _Prompt:  # no __eq__: compares by identity
    pass


@pytest.mark.parametrize("labels, match", [
    ([_Prompt() for _ in range(6)], r"groups\[0\] is a _Prompt, which compares by identity"),
    ([torch.tensor([1, 2])] * 6, r"groups\[0\] is a tensor of shape \(2,\): a label must be one value"),
    ([1, 1, np.array([1, 2]), 2, 2, 2], r"groups\[2\] is an array of shape \(2,\)"),
    ([1, 1, {"a": 1}, 2, 2, 2], r"groups labels must be hashable .* found dict at index 2"),
    ([1, 1, (1, [2]), 2, 2, 2], r"groups labels must be hashable .* found tuple at index 2"),
])
def test_labels_that_cannot_name_a_group_by_value_are_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(R, labels, estimator="rloo")


def test_strings_and_numbers_stay_distinct_and_none_is_one_label():
    got = ik.group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), ["1", 1, None, None], estimator="rloo")
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 1.0, -1.0]))


# ---- normalisers given as tensors ------------------------------------------------------------------

def _ppo_batch():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float32) * 2
    old = logp + 0.05 * torch.randn(3, 5, generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0])
    return logp, old, adv


BAD_COUNTS = [-3.0, 0.0, NAN, math.inf]


@pytest.mark.parametrize("backend", PPO_BACKENDS)
@pytest.mark.parametrize("name, aggregation", [("num_tokens", "token-mean"),
                                               ("num_sequences", "seq-mean-token-mean")])
@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_a_bad_tensor_normaliser_is_refused_like_a_number(backend, name, aggregation, bad):
    logp, old, adv = _ppo_batch()
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
        ik.ppo_loss(logp, old, adv, aggregation=aggregation, backend=backend, **{name: bad})
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0, got"):
        ik.ppo_loss(logp, old, adv, aggregation=aggregation, backend=backend, **{name: torch.tensor(bad)})
    hidden, weight = torch.randn(3, 5, 4), torch.randn(6, 4)
    targets = torch.randint(0, 6, (3, 5))
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0, got"):
        ik.linear_ppo_loss(hidden, weight, targets, old, adv, aggregation=aggregation, backend=backend,
                           **{name: torch.tensor(bad)})
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0, got"):  # even without check_finite
        ik.linear_ppo_loss(hidden, weight, targets, old, adv, aggregation=aggregation, backend=backend,
                           check_finite=False, **{name: torch.tensor(bad)})


@pytest.mark.parametrize("backend", PPO_BACKENDS)
@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_without_the_sync_a_bad_tensor_normaliser_makes_the_loss_nan_not_reversed(backend, bad):
    logp, old, adv = _ppo_batch()
    logp.requires_grad_()
    loss, _ = ik.ppo_loss(logp, old, adv, num_tokens=torch.tensor(bad), check_finite=False, backend=backend)
    loss.backward()
    assert math.isnan(loss.item())
    assert bool(torch.isnan(logp.grad).all())


@pytest.mark.parametrize("backend", PPO_BACKENDS)
def test_a_valid_tensor_normaliser_equals_the_number(backend):
    logp, old, adv = _ppo_batch()
    for check_finite in (True, False):
        for name, aggregation, value in [("num_tokens", "token-mean", 40), ("num_sequences", "grpo", 6)]:
            a, _ = ik.ppo_loss(logp, old, adv, aggregation=aggregation, backend=backend, check_finite=check_finite,
                               **{name: value})
            for t in (torch.tensor(value), torch.tensor(float(value)), torch.tensor([value]), np.int64(value)):
                b, _ = ik.ppo_loss(logp, old, adv, aggregation=aggregation, backend=backend,
                                   check_finite=check_finite, **{name: t})
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scalar_options_take_their_value_from_tensors_and_numpy_scalars():
    logp, old, adv = _ppo_batch()
    ref_logp = old - 0.1
    entropy = torch.rand(3, 5)
    plain = dict(clip_low=0.1, clip_high=0.3, dual_clip=2.0, kl_coef=0.05, entropy_coef=0.01, norm_length=7)
    want, _ = ik.ppo_loss(logp, old, adv, ref_logp=ref_logp, entropy=entropy, **plain)
    for wrap in (torch.tensor, np.float64, lambda v: torch.tensor([v])):
        opts = {k: (np.int64(v) if k == "norm_length" and wrap is np.float64 else
                    torch.tensor(v) if k == "norm_length" else wrap(v)) for k, v in plain.items()}
        got, _ = ik.ppo_loss(logp, old, adv, ref_logp=ref_logp, entropy=entropy, **opts)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    hidden, weight, targets = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randint(0, 5, (2, 3))
    want = ik.linear_logprobs(hidden, weight, targets, temperature=0.7, logit_scale=0.5, softcap=3.0)
    got = ik.linear_logprobs(hidden, weight, targets, temperature=torch.tensor(0.7), logit_scale=np.float32(0.5),
                             softcap=torch.tensor(3.0), chunk_size=torch.tensor(2), ignore_index=np.int64(-100))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("option, value, match", [
    ("clip_low", True, r"clip_low must be a real number \(int or float\), got bool"),
    ("clip_low", "0.2", r"clip_low must be a real number \(int or float\), got str"),
    ("clip_high", torch.tensor([0.2, 0.3]), r"clip_high must be a real number or a one-element real tensor"),
    ("kl_coef", torch.tensor(-1.0), r"kl_coef must be >= 0, got -1.0"),
    ("kl_coef", 10 ** 400, r"kl_coef must be finite, got inf"),
    ("entropy_coef", np.bool_(True), r"entropy_coef must be a real number .* got bool"),
    ("dual_clip", torch.tensor(NAN), r"dual_clip must be finite and > 0, got nan"),
    ("num_tokens", 10 ** 400, r"num_tokens must be finite and > 0, got inf"),
    ("norm_length", 2.0, r"norm_length must be an int, got float"),
    ("norm_length", 2 ** 64, r"norm_length=18446744073709551616 is outside the int64 range"),
    ("kl_estimator", ["k3"], r"kl_estimator must be one of k1, k2, k3"),
], ids=lambda x: x if isinstance(x, str) and len(x) < 20 else type(x).__name__)
def test_bad_scalar_options_name_themselves(option, value, match):
    logp, old, adv = _ppo_batch()
    with pytest.raises(ValueError, match=match):
        ik.ppo_loss(logp, old, adv, **{option: value})


@pytest.mark.parametrize("call, match", [
    (lambda h, w, t: ik.linear_logprobs(h, w, t, ignore_index=10 ** 20),
     r"ignore_index=100000000000000000000 is outside the int64 range"),
    (lambda h, w, t: ik.linear_logprobs(h, w, t, ignore_index=-(2 ** 63) - 1), r"ignore_index=.* is outside the int64"),
    (lambda h, w, t: ik.linear_ppo_loss(h, w, t, None, torch.ones(2), ignore_index=2 ** 63),
     r"ignore_index=9223372036854775808 is outside the int64 range"),
    (lambda h, w, t: ik.linear_logprobs(h, w, t, chunk_size=10 ** 20), r"chunk_size=.* is outside the int64 range"),
    (lambda h, w, t: ik.group_advantages(torch.rand(4), 4, estimator="passk", k=2 ** 70),
     r"k=1180591620717411303424 is outside the int64 range"),
    (lambda h, w, t: ik.pass_at_k(1, 4, 2 ** 64), r"k=.* is outside the int64 range"),
    (lambda h, w, t: ik.group_advantages(torch.zeros(0), 2 ** 64, estimator="rloo"),
     r"groups=18446744073709551616 is outside the int64 range"),
], ids=["ignore_index-big", "ignore_index-small", "ppo-ignore_index", "chunk_size", "k", "pass_at_k-k", "groups"])
def test_integer_options_outside_int64_are_value_errors(call, match):
    hidden, weight, targets = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randint(0, 5, (2, 3))
    with pytest.raises(ValueError, match=match):
        call(hidden, weight, targets)


# ---- nan_policy="omit" with passk's "loo" ----------------------------------------------------------

@pytest.mark.parametrize("backend", ADV_BACKENDS)
def test_omit_with_loo_gives_zero_to_a_group_left_with_k_scored_samples(backend):
    r = torch.tensor([1.0, 0.0, NAN, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    got = ik.group_advantages(r, 4, estimator="passk", k=3, variant="loo", nan_policy="omit", backend=backend)
    assert bool((got[:4] == 0).all())  # 3 scored = k: loo's baseline needs k of the other n - 1 = 2
    for g in (1, 2):
        want = ik.group_advantages(r[4 * g:4 * g + 4], 4, estimator="passk", k=3, variant="loo", backend=backend)
        torch.testing.assert_close(got[4 * g:4 * g + 4], want, rtol=0, atol=0)
    # a group that keeps k + 1 scored samples is estimated on them
    r2 = torch.tensor([1.0, 0.0, NAN, 1.0, 0.5])
    got2 = ik.group_advantages(r2, 5, estimator="passk", k=3, variant="loo", nan_policy="omit", backend=backend)
    want2 = ik.group_advantages(r2[[0, 1, 3, 4]], 4, estimator="passk", k=3, variant="loo", backend=backend)
    torch.testing.assert_close(got2[[0, 1, 3, 4]], want2)
    assert got2[2] == 0


# ---- linear_ppo_loss: a second backward --------------------------------------------------------------

def test_a_second_backward_through_linear_ppo_loss_says_what_pytorch_says():
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight, targets = torch.randn(5, 4), torch.randint(0, 5, (2, 3))
    loss, _ = ik.linear_ppo_loss(hidden, weight, targets, None, torch.tensor([1.0, -1.0]))
    loss.backward(retain_graph=True)  # kept: the next backward may run
    first = hidden.grad.clone()
    loss.backward()
    torch.testing.assert_close(hidden.grad, 2 * first)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        loss.backward()


# ---- settings outside the float32 range the kernels compute in ----------------------------------------

@pytest.mark.parametrize("backend", PPO_BACKENDS)
@pytest.mark.parametrize("clips", [dict(clip_low=1e300), dict(clip_high=1e300), dict(clip_low=5.0, clip_high=1e12),
                                   dict(dual_clip=1e300), dict(clip_high=1e300, dual_clip=1e300)])
def test_clip_values_past_any_ratio_run_everywhere_as_no_clipping(backend, clips):
    # The ratio lies in [e^-20, e^20]: clip values past it are capped exactly (torch overflowed 1 + 1e300
    # in float32 with a RuntimeError; the native kernels read them as C++ floats, undefined behaviour).
    logp, old, adv = _ppo_batch()
    old = old + torch.tensor([[-3.0], [2.0], [25.0]])  # ratios far outside any usual trust region
    logp.requires_grad_()
    loss, metrics = ik.ppo_loss(logp, old, adv, backend=backend, **clips)
    loss.backward()
    want_logp = logp.detach().double().requires_grad_()
    want, _ = ref.ppo_loss(want_logp, old.double(), adv.double(), **clips)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp.grad.double(), want_logp.grad, rtol=1e-5, atol=1e-6)
    assert metrics["clip_frac_dual"] == 0
    if clips.get("clip_high", clips.get("clip_low", 0)) > 1e9:
        assert metrics["clip_frac_high"] == 0


@pytest.mark.parametrize("option, value, match", [
    ("temperature", 1e300, r"temperature=1e\+300 is outside the float32 range .* \[1.18e-38, 8.51e\+37\]"),
    ("temperature", 1e-39, r"temperature=1e-39 is outside the float32 range"),
    ("logit_scale", -1e39, r"logit_scale=-1e\+39 is outside the float32 range"),
    ("softcap", 1e-300, r"softcap=1e-300 is outside the float32 range"),
    ("softcap", 1e38, r"softcap=1e\+38 is outside the float32 range"),
])
@pytest.mark.parametrize("backend", PPO_BACKENDS)
def test_lm_head_settings_outside_float32_are_refused_for_float32_compute(option, value, match, backend):
    hidden, weight, targets = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randint(0, 5, (2, 3))
    with pytest.raises(ValueError, match=match):  # triton returned NaN at temperature=1e300
        ik.linear_logprobs(hidden, weight, targets, backend=backend, **{option: value})
    with pytest.raises(ValueError, match=match):
        ik.linear_ppo_loss(hidden, weight, targets, None, torch.ones(2), backend=backend, **{option: value})
    # float64 computes take the value: here it is exact
    got = ik.linear_logprobs(hidden.double(), weight.double(), targets, backend="torch", **{option: value})
    want = ref.linear_logprobs(hidden.double(), weight.double(), targets, **{option: value})
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("option, value, match", [
    ("kl_coef", 1e39, r"kl_coef=1e\+39 is outside the float32 range"),
    ("entropy_coef", -1e300, r"entropy_coef=-1e\+300 is outside the float32 range"),
    ("num_tokens", 1e300, r"num_tokens=1e\+300 is outside the float32 range .*the loss is divided by it"),
    ("num_tokens", 1e-300, r"num_tokens=1e-300 is outside the float32 range"),
])
@pytest.mark.parametrize("backend", PPO_BACKENDS)
def test_loss_settings_outside_float32_are_refused_for_float32_compute(option, value, match, backend):
    # num_tokens=1e300 made the loss 0 (no update, silently), kl_coef=1e39 an inf loss.
    logp, old, adv = _ppo_batch()
    with pytest.raises(ValueError, match=match):
        ik.ppo_loss(logp, old, adv, ref_logp=old, entropy=torch.rand(3, 5), backend=backend, **{option: value})
    loss, _ = ik.ppo_loss(logp.double(), old.double(), adv.double(), ref_logp=old.double(),
                          entropy=torch.rand(3, 5, dtype=torch.float64), backend="torch", **{option: value})
    assert loss.dtype == torch.float64


def test_a_tensor_normaliser_is_checked_as_the_loss_reads_it():
    logp, old, adv = _ppo_batch()  # 1e-300 is a positive float64 but 0 in float32: the loss divides by it
    with pytest.raises(ValueError, match=r"num_tokens must be finite and > 0, got 1e-300 \(a tensor, read as 0.0 "):
        ik.ppo_loss(logp, old, adv, num_tokens=torch.tensor(1e-300, dtype=torch.float64))


# ---- importance weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", PPO_BACKENDS)
@pytest.mark.parametrize("bad", [-0.5, NAN, math.inf])
def test_an_importance_weight_that_would_reverse_or_void_an_update_is_refused(backend, bad):
    # A negative weight silently turned that token's descent into ascent; NaN / inf voided the loss.
    logp, old, adv = _ppo_batch()
    iw = torch.rand(3, 5) + 0.5
    iw[1, 2] = bad
    mask = torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"importance_weights must be finite and >= 0 on valid tokens .* at index "
                                         r"\(1, 2\)"):
        ik.ppo_loss(logp, old, adv, mask, importance_weights=iw, backend=backend)
    hidden, weight, targets = torch.randn(3, 5, 4), torch.randn(6, 4), torch.randint(0, 6, (3, 5))
    for check_finite in (True, False):  # linear_ppo_loss checks them in its one sync either way
        with pytest.raises(ValueError, match=r"importance_weights must be finite and >= 0 on valid tokens"):
            ik.linear_ppo_loss(hidden, weight, targets, old, adv, mask, importance_weights=iw, backend=backend,
                               check_finite=check_finite)
    logp.requires_grad_()
    loss, _ = ik.ppo_loss(logp, old, adv, mask, importance_weights=iw, backend=backend, check_finite=False)
    loss.backward()
    assert math.isnan(loss.item()) and bool(torch.isnan(logp.grad[1, 2]))
    mask[1, 2] = False  # off the mask a weight may hold anything
    loss, _ = ik.ppo_loss(logp.detach(), old, adv, mask, importance_weights=iw, backend=backend)
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("backend", PPO_BACKENDS)
def test_the_new_checks_keep_ppo_loss_to_its_documented_syncs(backend):
    from test_ppo_loss import _CountSyncs

    logp, old, adv = _ppo_batch()
    logp.requires_grad_()
    kw = dict(num_tokens=torch.tensor(12.0), importance_weights=torch.rand(3, 5), backend=backend)
    with _CountSyncs() as mode:  # no sync at all without check_finite
        loss, _ = ik.ppo_loss(logp, old, adv, check_finite=False, **kw)
        loss.backward()
    assert mode.syncs == []
    with _CountSyncs() as mode:  # advantages, normaliser and weights share check_finite's one sync
        ik.ppo_loss(logp, old, adv, **kw)
    assert len(mode.syncs) == 1


@pytest.mark.parametrize("size", [torch.tensor(2), torch.tensor(2, dtype=torch.uint8), np.int64(2), np.int8(2)])
def test_a_group_size_given_as_a_0d_tensor_or_numpy_int_is_read_by_value(size):
    r = torch.tensor([1.0, 0.0, NAN, 1.0])
    want = ik.group_advantages(r, 2, estimator="rloo", nan_policy="omit")
    torch.testing.assert_close(ik.group_advantages(r, size, estimator="rloo", nan_policy="omit"), want)
    correct = torch.tensor([True, False, True, True])
    torch.testing.assert_close(ik.group_pass_at_k(correct, size, 1), ik.group_pass_at_k(correct, 2, 1))
    torch.testing.assert_close(ik.maj_at_k(torch.tensor([1, 1, 2, 3]), correct, size, 2),
                               ik.maj_at_k(torch.tensor([1, 1, 2, 3]), correct, 2, 2))
    torch.testing.assert_close(ik.length_penalized_rewards(correct, torch.ones(4), size, alpha=0.1),
                               ik.length_penalized_rewards(correct, torch.ones(4), 2, alpha=0.1))


@pytest.mark.parametrize("backend", ADV_BACKENDS)
@pytest.mark.parametrize("estimator, bad, match", [
    ("majority", math.inf, r"rewards must be finite: it has NaN or inf \(first at index 3: inf\)"),
    ("passk", math.inf, r"rewards must be finite: .*index 3"),
    ("passk", 5.0, r"rewards must lie in \[0, 1\] for estimator='passk' .* found 5.0 at index 3"),
    ("passk_chen", 0.5, r"rewards must be 0 or 1 for estimator='passk_chen' .* found 0.5 at index 3"),
    ("rloo", -math.inf, r"rewards must be finite: .*index 3"),
])
def test_omit_still_refuses_a_bad_reward_in_a_group_it_leaves_out(backend, estimator, bad, match):
    # Group 0 loses samples to NaN and is left out (advantage 0): an inf or out-of-domain reward in
    # it passed silently, though "inf still raises"; one in a kept group was named by its index
    # among the scored samples, not in the batch.
    r = torch.tensor([NAN, NAN, NAN, bad, 0.0, 1.0, 1.0, 0.0])
    kw = dict(k=3) if estimator in ("passk", "passk_chen") else {}
    answers = torch.zeros(8, dtype=torch.int64) if estimator == "majority" else None
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(r, 4, estimator=estimator, answers=answers, nan_policy="omit", backend=backend, **kw)
    r2 = torch.tensor([NAN, 0.0, 1.0, bad, 0.0, 1.0, 1.0, 0.0])  # kept group: the index is the batch's
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(r2, 4, estimator=estimator, answers=answers, nan_policy="omit", backend=backend,
                            **kw)


# ---- log-probs of large logits ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", PPO_BACKENDS)
@pytest.mark.parametrize("scale", [1e3, 3e4])
def test_the_log_prob_of_a_large_logit_keeps_its_own_precision(backend, scale):
    # logp was x_t - lse: at |logits| ~ 1e3 in fp32, lse's rounding (6e-5) swamped a log-prob of
    # -4.5e-5 (it came out 0 or -6.1e-5). (x_t - m) - log s keeps plain PyTorch's relative precision.
    hidden = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.5, 1.0]]])
    weight = torch.tensor([[scale, 0.0], [scale - 10.0, 0.0], [scale - 12.0, 3.0]])
    targets = torch.tensor([[0, 1, 2]])
    want = ref.linear_logprobs(hidden.double(), weight.double(), targets)
    plain = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[..., None])[..., 0]  # PyTorch, fp32
    got = ik.linear_logprobs(hidden, weight, targets, backend=backend)
    err, plain_err = (got.double() - want).abs(), (plain.double() - want).abs()
    assert bool((err <= 2 * plain_err + 1e-9).all()), (err, plain_err)  # the design's rule: <= 2x PyTorch's
    assert got[0, 0] < 0  # -4.54e-5, not 0
    loss, metrics = ik.linear_ppo_loss(hidden, weight, targets, want.float(), torch.tensor([1.0]), backend=backend)
    assert abs(metrics["ratio_mean"].item() - 1.0) < 1e-6  # the fused row pass reads the same log-probs

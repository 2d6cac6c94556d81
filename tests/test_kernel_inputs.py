"""Hostile and careless inputs to the kernel ops: a clear error, or a defined result; never a crash,
an access outside a buffer, or a plausible-looking wrong number.

Covers, for every backend that has the op: integer targets narrower than int64, targets that reach
a kernel out of range (the kernels' own bounds checks), the registered custom ops called directly,
NaN / inf propagation, the sign of log-probs and entropies, empty dimensions, meta tensors and
ill-typed settings.
"""

import subprocess
import sys

import pytest
import torch

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels.ops import ppo


def _kernels(backend: str, family: str):
    """kernels/<backend>/<family>.py, the module the front-ends select, from the registry."""
    return backends.kernel_module({"logprobs": "linear_logprobs", "ppo": "ppo_loss"}[family], backend)

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
BACKENDS = ["torch", "cpu", TRITON]
NAN = float("nan")


def _ppo_inputs(B=2, T=4, H=16, V=300, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.3
    return hidden, weight, torch.randn(B, T, generator=g) - 3, torch.randn(B, generator=g)


# ---------------------------------------------------------------------------------------------
# 1. Integer targets narrower than int64 are validated as the int64 the kernels read


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_target_out_of_range_is_rejected_not_read(backend):
    # uint8 wraps ignore_index=-100 to 156: checked in uint8, id 156 passed as "ignored" and the
    # kernel then wrote 156 elements into a row of 10 (heap corruption).
    h, w = torch.randn(8, 16, requires_grad=True), torch.randn(10, 16)
    t = torch.zeros(8, dtype=torch.uint8)
    t[-1] = 156
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\) or equal ignore_index=-100; found 156"):
        ik.linear_logprobs(h, w, t, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_targets_with_an_ignore_index_they_cannot_hold(backend):
    # int8 cannot hold 156: compared in int8, -100 counted as "ignored" and was then read at -100.
    h, w = torch.randn(8, 16), torch.randn(10, 16)
    t = torch.zeros(8, dtype=torch.int8)
    t[-1] = -100
    with pytest.raises(ValueError, match=r"equal ignore_index=156; found -100"):
        ik.linear_logprobs(h, w, t, ignore_index=156, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_narrow_targets_equal_int64_targets(backend, dtype):
    # linear_ppo_loss with uint8 targets used to mask token 156 silently (and reject V >= 256).
    hidden, weight, old, adv = _ppo_inputs(V=300)
    t64 = torch.randint(0, 200, (2, 4))
    t64[0, 1] = 156
    want, want_m = ik.linear_ppo_loss(hidden, weight, t64, old, adv, backend=backend)
    got, got_m = ik.linear_ppo_loss(hidden, weight, t64.to(dtype), old, adv, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_m["entropy_mean"], want_m["entropy_mean"], rtol=0, atol=0)
    lp64 = ik.linear_logprobs(hidden, weight, t64, backend=backend)
    assert torch.equal(ik.linear_logprobs(hidden, weight, t64.to(dtype), backend=backend), lp64)
    assert lp64[0, 1] < 0  # token 156 is a real token, not masked


def test_linear_ppo_loss_rejects_out_of_range_narrow_targets():
    hidden, weight, old, adv = _ppo_inputs(V=10)
    t = torch.zeros(2, 4, dtype=torch.uint8)
    t[1, 2] = 156
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\) on valid tokens .*found 156"):
        ik.linear_ppo_loss(hidden, weight, t, old, adv)


# ---------------------------------------------------------------------------------------------
# 1 (second line). The kernels never index outside a row, whatever target reaches them


def _guarded_logits(rows, V, guard=3):
    """A [rows, V] view inside a larger buffer whose guard rows hold a sentinel."""
    buf = torch.full((rows + 2 * guard, V), 7.25)
    z = buf[guard:guard + rows]
    z.copy_(torch.randn(rows, V))
    return buf, z, guard


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_pass_flags_bad_targets_with_nan_and_stays_in_its_row(backend):
    rows, V = 5, 11
    buf, z, guard = _guarded_logits(rows, V)
    targets = torch.tensor([3, -7, 11, 10**12, -100], dtype=torch.int64)
    logp, lse, ent = (torch.empty(rows) for _ in range(3))
    rp = _kernels(backend, "logprobs")
    rp.rows_forward(z, targets, 1.0, -100, logp, lse, ent)
    assert logp[0] < 0 and logp[4] == 0
    assert torch.isnan(logp[1:4]).all()
    assert torch.isfinite(lse).all() and torch.isfinite(ent).all()
    p4 = torch.softmax(z[4], 0)
    rp.rows_backward(z, targets, 1.0, -100, lse, ent, torch.ones(rows), None)
    assert torch.isnan(z[1:4]).all() and torch.isfinite(z[0]).all()
    torch.testing.assert_close(z[4], -p4)  # an ignored row: -g p, no target term
    assert (buf[:guard] == 7.25).all() and (buf[guard + rows:] == 7.25).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_ppo_row_pass_flags_bad_targets_with_nan_and_stays_in_its_row(backend):
    rows, V = 4, 9
    buf, z, guard = _guarded_logits(rows, V)
    targets = torch.tensor([2, 9, -1, -100], dtype=torch.int64)
    opts = ppo.PpoOptions.from_kwargs()
    logp, ent, loss, ratio = (torch.empty(rows) for _ in range(4))
    _kernels(backend, "ppo").fused_rows(
        z, targets, 1.0, -100, torch.full((rows,), -2.0), torch.ones(rows), None, torch.full((rows,), 0.25), opts,
        logp, ent, loss, ratio)
    assert torch.isfinite(torch.stack([logp[0], loss[0], ratio[0]])).all()
    assert torch.isnan(logp[1:3]).all() and torch.isnan(loss[1:3]).all()
    assert logp[3] == 0 and loss[3] == 0 and ratio[3] == 1
    assert torch.isnan(z[1:3]).all() and (z[3] == 0).all()
    assert (buf[:guard] == 7.25).all() and (buf[guard + rows:] == 7.25).all()


# ---------------------------------------------------------------------------------------------
# 2. The registered custom ops are public: they validate what reaches native code


def _op_args(rows=4, V=10):
    return dict(z=torch.randn(rows, V), targets=torch.zeros(rows, dtype=torch.int64), temperature=1.0,
                ignore_index=-100, lse=torch.zeros(rows), entropy=torch.zeros(rows), g_logp=torch.ones(rows),
                g_entropy=None)


@pytest.mark.parametrize("change, match", [
    (dict(targets=torch.full((4,), 10**6, dtype=torch.int32)), r"targets must be an int64 tensor of shape \(4,\)"),
    (dict(targets=torch.zeros(3, dtype=torch.int64)), r"targets must be an int64 tensor of shape \(4,\)"),
    (dict(z=torch.randn(4, 10, dtype=torch.float64)), r"z must be a 2-D float32 tensor"),
    (dict(z=torch.randn(10, 4).T), r"z's rows must be contiguous"),
    (dict(lse=torch.zeros(2)), r"lse must be a float32 tensor of shape \(4,\)"),
    (dict(g_logp=torch.ones(8)[::2]), r"g_logp must be contiguous"),
    (dict(g_entropy=torch.ones(4, dtype=torch.float16)), r"g_entropy must be a float32 tensor"),
    (dict(temperature=0.0), r"temperature must be a finite float > 0"),
    (dict(temperature=float("nan")), r"temperature must be a finite float > 0"),
])
def test_custom_op_backward_validates_its_arguments(change, match):
    args = {**_op_args(), **change}
    with pytest.raises(ValueError, match=r"logprob_rows_backward: " + match):
        torch.ops.ia_kernels.logprob_rows_backward(**args)


def test_custom_op_forward_validates_its_arguments():
    z = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"logprob_rows_forward: entropy must be a float32 tensor of shape \(4,\)"):
        torch.ops.ia_kernels.logprob_rows_forward(z, torch.zeros(4, dtype=torch.int64), 1.0, -100,
                                                   torch.empty(4), torch.empty(4), torch.empty(3))


def test_custom_op_called_with_int32_targets_does_not_crash_the_process():
    # This call was a segfault: run it in a child so that a regression fails this test, not the suite.
    code = ("import torch, ia_kernels\n"
            "z = torch.randn(4, 10); t = torch.full((4,), 10**6, dtype=torch.int32)\n"
            "try:\n"
            "    torch.ops.ia_kernels.logprob_rows_backward(z, t, 1.0, -100, torch.zeros(4), torch.zeros(4),"
            " torch.ones(4), None)\n"
            "except ValueError as e:\n"
            "    print('ValueError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ValueError logprob_rows_backward: targets must be an int64 tensor" in out.stdout


# ---------------------------------------------------------------------------------------------
# 3. NaN and inf propagate the same way on every backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["logp", "old_logp", "ref_logp"])
@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_ppo_loss_propagates_nan_on_every_backend(backend, where, importance):
    # The cpu backend clamped a NaN log ratio to -20 (fmaxf drops NaN) and returned a finite loss.
    args = dict(logp=torch.full((2, 3), -1.0), old_logp=torch.full((2, 3), -1.2), ref_logp=torch.full((2, 3), -0.9))
    args[where][0, 1] = NAN
    loss, metrics = ik.ppo_loss(args["logp"], args["old_logp"], torch.tensor([1.0, -0.5]), ref_logp=args["ref_logp"],
                                kl_coef=0.1, dual_clip=3.0, importance=importance, backend=backend)
    assert torch.isnan(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_loss_nan_advantage_without_check_gives_nan(backend):
    adv = torch.tensor([NAN, 1.0])
    with pytest.raises(ValueError, match="advantages must be finite on valid tokens"):
        ik.ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, backend=backend)
    loss, _ = ik.ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, check_finite=False, backend=backend)
    assert torch.isnan(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits_give_nan_rows_and_leave_other_rows_alone(backend):
    # Row 1 holds NaN, row 2 +inf, row 3 only -inf: NaN outputs on every backend (torch gave -inf
    # for +inf logits, cpu/triton NaN). Rows 0 and 4 are unaffected.
    V = 7
    z = torch.randn(5, V)
    z[1, 3] = NAN
    z[2, 5] = float("inf")
    z[3] = float("-inf")
    targets = torch.tensor([1, 2, 5, 0, 6])
    want = torch.log_softmax(z.double(), -1)
    logp, lse, ent = (torch.empty(5) for _ in range(3))
    _kernels(backend, "logprobs").rows_forward(z.clone(), targets, 1.0, -100, logp, lse, ent)
    for out in (logp, lse, ent):
        assert torch.isnan(out[1:4]).all(), out
    for r in (0, 4):
        assert abs(logp[r].item() - want[r, targets[r]].item()) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_ppo_loss_with_inf_hidden_is_nan_on_every_backend(backend):
    hidden, weight, old, adv = _ppo_inputs()
    hidden[1, 2, 0] = float("inf")
    loss, metrics = ik.linear_ppo_loss(hidden, weight, torch.randint(0, 300, (2, 4)), old, adv, backend=backend)
    assert torch.isnan(loss) and torch.isnan(metrics["entropy_mean"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_logits_are_tokens_of_probability_zero(backend):
    # A -inf bias bans a token: its probability is 0, the other tokens' values and the entropy are
    # those of the remaining vocabulary, and no NaN appears in the gradient (0 * -inf).
    g = torch.Generator().manual_seed(5)
    N, H, V = 9, 12, 23
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    bias = torch.zeros(V, dtype=torch.float64)
    banned = torch.tensor([0, 4, 5, 22])
    bias[banned] = float("-inf")
    targets = torch.randint(0, V, (N,), generator=g)
    targets[targets.unsqueeze(1).eq(banned).any(1)] = 7
    targets[0] = 4  # a banned target: logp = -inf, exactly
    keep = torch.ones(V, dtype=torch.bool)
    keep[banned] = False
    lp_ref = torch.log_softmax(hidden @ weight[keep].T, -1)
    h32 = hidden.float().requires_grad_()
    logp, ent = ik.linear_logprobs(h32, weight.float(), targets, bias=bias.float(), return_entropy=True,
                                   backend=backend)
    assert logp[0] == float("-inf")
    col = torch.cumsum(keep.long(), 0) - 1  # index of a kept token among the kept ones
    want = lp_ref.gather(1, col[targets][:, None]).squeeze(1)
    assert (logp[1:].double() - want[1:]).abs().max() < 1e-5
    assert (ent.double() - -(lp_ref.exp() * lp_ref).sum(-1)).abs().max() < 1e-5
    (ent.sum() + logp[1:].sum()).backward()
    assert torch.isfinite(h32.grad).all()


# ---------------------------------------------------------------------------------------------
# 4. A log-prob is never positive and an entropy never negative, at any temperature


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1e-3, 1e-6])
def test_argmax_log_probs_are_never_positive(backend, temperature):
    # The cpu backend gave logp > 0 on 2025 of 4096 rows at T=1e-6 (up to +1.9): z * (1/T) - m was
    # contracted into an FMA in one sweep and rounded in the other.
    g = torch.Generator().manual_seed(1)
    N = 256 if backend == "triton" else 2048
    h, w = torch.randn(N, 64, generator=g), torch.randn(1000, 64, generator=g)
    t = (h @ w.T).argmax(-1)
    logp, ent = ik.linear_logprobs(h, w, t, temperature=temperature, return_entropy=True, backend=backend)
    assert (logp <= 0).all(), f"{(logp > 0).sum()} positive, max {logp.max():.3g}"
    assert (ent >= 0).all(), f"{(ent < 0).sum()} negative, min {ent.min():.3g}"
    loss, m = ik.linear_ppo_loss(h[None], w, t[None], torch.zeros(1, N), torch.ones(1), temperature=temperature,
                                 backend=backend)
    assert (m["entropy_mean"] >= 0) and (m["ratio_max"] <= 1)  # ratio = exp(logp - 0) <= 1


# ---------------------------------------------------------------------------------------------
# 6. Empty dimensions, meta tensors, ill-typed settings


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches_have_defined_results(backend):
    w = torch.randn(5, 8, requires_grad=True)
    lp, ent = ik.linear_logprobs(torch.randn(0, 8), w, torch.zeros(0, dtype=torch.long), return_entropy=True,
                                 backend=backend)
    assert lp.shape == (0,) and ent.shape == (0,)
    # H = 0: every logit is 0 (plus the bias), so every token has probability 1/V.
    lp = ik.linear_logprobs(torch.randn(3, 0), torch.randn(5, 0), torch.tensor([0, 4, -100]), backend=backend)
    torch.testing.assert_close(lp, torch.tensor([-torch.log(torch.tensor(5.0)).item()] * 2 + [0.0]))
    for B, T in ((0, 4), (2, 0)):
        loss, m = ik.linear_ppo_loss(torch.randn(B, T, 8), w, torch.zeros(B, T, dtype=torch.long),
                                     torch.zeros(B, T), torch.ones(B), backend=backend)
        assert loss.item() == 0.0 and m["ratio_min"].item() == 1.0 and m["ratio_max"].item() == 1.0
        loss.backward()
        assert (w.grad == 0).all()
        loss, m = ik.ppo_loss(torch.zeros(B, T), torch.zeros(B, T), torch.ones(B), backend=backend)
        assert loss.item() == 0.0 and m["ratio_min"].item() == 1.0


def test_meta_tensors_are_refused_by_name():
    meta = dict(device="meta")
    with pytest.raises(ValueError, match="hidden is a meta tensor"):
        ik.linear_logprobs(torch.randn(3, 8, **meta), torch.randn(5, 8, **meta), torch.zeros(3, dtype=torch.long, **meta))
    with pytest.raises(ValueError, match="hidden is a meta tensor"):
        ik.linear_ppo_loss(torch.randn(1, 3, 8, **meta), torch.randn(5, 8, **meta),
                           torch.zeros(1, 3, dtype=torch.long, **meta), torch.zeros(1, 3, **meta), torch.ones(1, **meta))
    with pytest.raises(ValueError, match="logp is a meta tensor"):
        ik.ppo_loss(torch.zeros(1, 3, **meta), torch.zeros(1, 3, **meta), torch.ones(1, **meta))


@pytest.mark.parametrize("value, match", [
    ("x", "ignore_index must be an int, got str 'x'"),
    (2.7, "ignore_index must be an int, got float 2.7"),
    (2.0, "ignore_index must be an int, got float 2.0"),
    (True, "ignore_index must be an int, got bool True"),
    (None, "ignore_index must be an int, got NoneType None"),
])
def test_ignore_index_must_be_an_int(value, match):
    # 2.7 was checked as 2.7 (matching nothing) and then used as 2 by the kernels.
    h, w, t = torch.randn(3, 8), torch.randn(5, 8), torch.tensor([0, 2, 1])
    with pytest.raises(ValueError, match=match):
        ik.linear_logprobs(h, w, t, ignore_index=value)
    with pytest.raises(ValueError, match=match):
        ik.linear_ppo_loss(h[None], w, t[None], torch.zeros(1, 3), torch.ones(1), ignore_index=value)


def test_numpy_and_tensor_ints_are_accepted_as_ignore_index():
    import numpy as np

    h, w, t = torch.randn(3, 8), torch.randn(5, 8), torch.tensor([0, 2, 1])
    want = ik.linear_logprobs(h, w, t, ignore_index=2)
    assert want[1] == 0
    assert torch.equal(ik.linear_logprobs(h, w, t, ignore_index=np.int16(2)), want)
    assert torch.equal(ik.linear_logprobs(h, w, t, ignore_index=torch.tensor(2)), want)

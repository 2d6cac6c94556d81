"""linear_logprobs against a float64 reference, for every backend and input dtype.

Error rule (docs/design.md, "Numerics"): a kernel's error against float64 is at most 2x the error of plain PyTorch in
the same input dtype, plus a small atol. "Plain PyTorch" is what users write: logits in the input
dtype, then log_softmax in fp32.
"""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

from conftest import DEVICES

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
BACKENDS = ["torch", "cpu", TRITON]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(N=37, H=123, V=507, dtype=torch.float32, device="cpu", scale=1.0, bias=True, lead=None):
    hidden = torch.randn(N, H, dtype=torch.float64)
    weight = torch.randn(V, H, dtype=torch.float64) * (scale / H**0.5)
    b = torch.randn(V, dtype=torch.float64) * scale if bias else None
    targets = torch.randint(0, V, (N,))
    targets[::5] = -100  # ignored rows
    if lead is not None:
        hidden = hidden.reshape(*lead, H)
        targets = targets.reshape(*lead)
    cast = lambda t: None if t is None else t.to(dtype).to(device)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), targets.to(device)


def eager_in_dtype(hidden, weight, bias, targets, temperature):
    """Plain PyTorch in the input dtype (the baseline of the 2x error rule)."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logprobs = torch.log_softmax(logits.float() / temperature, -1)
    ignored = targets == -100
    logp = logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    logp = torch.where(ignored, 0.0, logp)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


def values_and_grads(fn, hidden, weight, bias, g_logp, g_ent):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    logp, ent = fn(*leaves) if bias is not None else fn(*leaves, None)
    loss = (logp.double() * g_logp).sum() + (ent.double() * g_ent).sum()
    grads = torch.autograd.grad(loss, leaves)
    return [logp.double(), ent.double()] + [g.double() for g in grads]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("scale", [1.0, 20.0], ids=["unit-logits", "large-peaked-logits"])
def test_matches_float64_reference(backend, dtype, temperature, device, scale):
    # scale 20: logits of scale ~20 / T, most rows peaked on one token (entropy near 0), where an
    # unshifted entropy (lse - sum p x) cancels catastrophically.
    if backend == "cpu" and device != "cpu":
        pytest.skip("the cpu backend takes CPU tensors")
    hidden, weight, bias, targets = make_inputs(dtype=dtype, device=device, scale=scale)
    g_logp = torch.randn(targets.shape, dtype=torch.float64, device=device)
    g_ent = torch.randn(targets.shape, dtype=torch.float64, device=device)

    exact = values_and_grads(
        lambda h, w, b: ref.linear_logprobs(h, w, targets, bias=b, temperature=temperature, return_entropy=True),
        hidden.double(), weight.double(), bias.double(), g_logp, g_ent)
    plain = values_and_grads(lambda h, w, b: eager_in_dtype(h, w, b, targets, temperature),
                             hidden, weight, bias, g_logp, g_ent)
    ours = values_and_grads(
        lambda h, w, b: ik.linear_logprobs(h, w, targets, bias=b, temperature=temperature, return_entropy=True,
                                           backend=backend, chunk_size=16),
        hidden, weight, bias, g_logp, g_ent)

    assert ours[0].dtype == torch.float64  # (cast above) the op returns fp32 logp whatever the input dtype
    names = ["logp", "entropy", "grad_hidden", "grad_weight", "grad_bias"]
    atol = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 5e-4}[dtype]
    for name, e, p, o in zip(names, exact, plain, ours):
        assert max_err(o, e) <= 2 * max_err(p, e) + atol, (
            f"{name}: ours {max_err(o, e):.3g} vs plain PyTorch {max_err(p, e):.3g}")
    # Logits, log-sum-exp and entropy are fp32 whatever the input dtype: on the (rounded) inputs the
    # values are fp32-accurate, unlike plain PyTorch's bf16/fp16 logits.
    assert max_err(ours[0], exact[0]) < 1e-4 and max_err(ours[1], exact[1]) < 1e-4
    # Ignored rows: logp exactly 0 and no gradient from logp (only from the entropy term).
    assert (ours[0][targets == -100] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_dtype_is_fp32_for_low_precision_inputs(backend):
    hidden, weight, _, targets = make_inputs(N=6, H=8, V=11, dtype=torch.bfloat16, bias=False)
    logp, ent = ik.linear_logprobs(hidden, weight, targets, return_entropy=True, backend=backend)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_keep_fp32_accuracy(backend):
    # |z| around 30: rounding logits to bf16 before the log-sum-exp would cost ~0.06 here.
    hidden, weight, bias, targets = make_inputs(N=19, H=64, V=301, scale=30.0, bias=True)
    exact = ref.linear_logprobs(hidden.double(), weight.double(), targets, bias=bias.double())
    ours = ik.linear_logprobs(hidden, weight, targets, bias=bias, backend=backend)
    logits = hidden.double() @ weight.double().T + bias.double()
    assert logits.abs().max() > 25
    assert max_err(ours, exact) < 2e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_batch_dims(backend):
    hidden, weight, bias, targets = make_inputs(N=30, H=16, V=41, lead=(2, 3, 5))
    logp, ent = ik.linear_logprobs(hidden, weight, targets, bias=bias, return_entropy=True, backend=backend)
    assert logp.shape == (2, 3, 5) and ent.shape == (2, 3, 5)
    flat = ik.linear_logprobs(hidden.reshape(30, 16), weight, targets.reshape(30), bias=bias, backend=backend)
    torch.testing.assert_close(logp.reshape(30), flat)


def test_chunk_size_does_not_change_results():
    hidden, weight, bias, targets = make_inputs(N=29, H=20, V=97)
    outs = [ik.linear_logprobs(hidden, weight, targets, bias=bias, backend="cpu", chunk_size=c) for c in (1, 7, 29, 100)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("return_entropy", [False, True])
def test_gradcheck_float64(return_entropy):
    hidden, weight, bias, targets = make_inputs(N=7, H=5, V=13, dtype=torch.float64)
    hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()

    def fn(h, w, b):
        out = ik.linear_logprobs(h, w, targets, bias=b, temperature=0.8, return_entropy=return_entropy, chunk_size=3)
        return out

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), eps=1e-6, atol=1e-8)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any op produces (numel), to prove logits are never whole."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_never_materialises_all_logits(backend):
    N, H, V, chunk = 256, 8, 1000, 32
    hidden, weight, _, targets = make_inputs(N=N, H=H, V=V, bias=False)
    hidden.requires_grad_(), weight.requires_grad_()
    with _LargestAllocation() as mode:
        logp = ik.linear_logprobs(hidden, weight, targets, backend=backend, chunk_size=chunk)
        logp.sum().backward()
    # The largest intermediate is one chunk of logits (chunk x V) or the weight gradient (V x H).
    assert mode.largest <= max(chunk * V, V * H)
    assert N * V > 4 * mode.largest


def test_env_override_and_missing_backend_errors(monkeypatch):
    hidden, weight, _, targets = make_inputs(N=4, H=3, V=5, bias=False)
    with pytest.raises(ValueError, match="no 'bogus'|'bogus' is not a backend"):
        ik.linear_logprobs(hidden, weight, targets, backend="bogus")
    with pytest.raises(ValueError, match=r"backend 'cuda' .*cannot run here.*torch \(available\)"):
        ik.linear_logprobs(hidden, weight, targets, backend="cuda")
    monkeypatch.setenv("IA_KERNELS_BACKEND", "torch")
    torch.testing.assert_close(ik.linear_logprobs(hidden, weight, targets),
                               ik.linear_logprobs(hidden, weight, targets, backend="cpu"))
    monkeypatch.setenv("IA_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="IA_KERNELS_BACKEND='nonsense' is not a backend"):
        ik.linear_logprobs(hidden, weight, targets)


def test_available_backends_reports_reasons():
    info = ik.available_backends("linear_logprobs", "cpu")["linear_logprobs"]
    assert info["torch"] is None and info["cpu"] is None
    assert "CUDA tensors only" in info["cuda"]


@pytest.mark.parametrize("bad, match", [
    (dict(hidden=torch.randn(4, 3), weight=torch.randn(5, 2)), r"weight must have shape \[V, 3\]"),
    (dict(targets=torch.zeros(3, dtype=torch.long)), r"targets must have shape \(4,\)"),
    (dict(targets=torch.zeros(4)), "targets must be an integer tensor"),
    (dict(targets=torch.tensor([0, 1, 5, 2])), r"targets must lie in \[0, 5\).*found 5"),
    (dict(targets=torch.tensor([0, -3, 1, 2])), "found -3"),
    (dict(temperature=0.0), "temperature must be finite and > 0"),
    (dict(temperature=float("nan")), "temperature must be finite and > 0"),
    (dict(temperature=float("inf")), "temperature must be finite and > 0"),
    (dict(weight=torch.randn(5, 3, dtype=torch.float64)), r"hidden \(torch.float32\) and weight \(torch.float64\)"),
    (dict(bias=torch.randn(4)), r"bias must have shape \(5,\)"),
    (dict(hidden=torch.zeros(4, 3, dtype=torch.long)), "hidden must be a floating-point tensor"),
    (dict(weight=torch.randn(5, 3, device="meta")), "weight is a meta tensor .shape only, no data."),
    (dict(hidden=[[0.0] * 3] * 4), "hidden must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(bad, match):
    args = dict(hidden=torch.randn(4, 3), weight=torch.randn(5, 3), targets=torch.tensor([0, 1, 4, -100]),
                bias=None, temperature=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ik.linear_logprobs(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_cuda_backends_match_cpu_backend(backend):
    hidden, weight, bias, targets = make_inputs(N=300, H=96, V=5003, dtype=torch.bfloat16)
    exact = ref.linear_logprobs(hidden.double(), weight.double(), targets, bias=bias.double())
    ours = ik.linear_logprobs(hidden.cuda(), weight.cuda(), targets.cuda(), bias=bias.cuda(), backend=backend)
    assert max_err(ours.cpu(), exact) < 2e-3


def test_works_under_torch_compile():
    # aot_eager traces forward and backward through the custom ops (fake tensors included) without
    # spending CI time on code generation; the compiled step must equal the eager one.
    hidden, weight, _, targets = make_inputs(N=16, H=8, V=11, bias=False)

    def step(h, w):
        logp, ent = ik.linear_logprobs(h, w, targets, backend="cpu", return_entropy=True, chunk_size=5)
        return (logp * 2).sum() + ent.sum()

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager")):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(h, w)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)

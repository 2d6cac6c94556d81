"""The op x backend grid: every registered backend module offers its op's interface, with the same
signatures as the torch backend's; a backend named for a dtype it does not serve is an error, never
silently replaced; backend=None picks one that serves the dtype."""

import inspect

import pytest
import torch

import ia_kernels as ik
from ia_kernels import backends

INTERFACE = {
    "logprobs": ("rows_forward", "rows_backward"),
    "ppo": ("terms", "fused_rows"),
    "advantages": ("group_advantages", "length_penalized_rewards"),
}


def _params(fn):
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("op", sorted(backends._OPS))
def test_every_registered_module_offers_the_interface_of_its_op(op):
    entry = backends._OPS[op]
    for name, impl in entry.impls.items():
        if name == "triton" and not backends.triton_installed():
            continue
        family = impl.module.rsplit(".", 1)[1]
        assert impl.module == f"ia_kernels.kernels.{name}.{family}"  # kernels/<backend>/<op>.py
        module, reference = impl.load(), entry.impls["torch"].load()
        for fn in INTERFACE[family]:
            assert callable(getattr(module, fn, None)), f"{impl.module} lacks {fn}"
            if name != "cuda":  # the cuda launchers re-export the cpu module's custom ops
                assert _params(getattr(module, fn)) == _params(getattr(reference, fn)), (impl.module, fn)
        assert torch.float32 in impl.dtypes


def _float64_calls():
    h = torch.randn(2, 3, 8, dtype=torch.float64)
    w = torch.randn(11, 8, dtype=torch.float64)
    t = torch.randint(0, 11, (2, 3))
    lp = torch.randn(2, 3, dtype=torch.float64) - 2
    return {
        "linear_logprobs": lambda b: ik.linear_logprobs(h, w, t, backend=b),
        "linear_ppo_loss": lambda b: ik.linear_ppo_loss(h, w, t, lp, torch.ones(2, dtype=torch.float64), backend=b)[0],
        "ppo_loss": lambda b: ik.ppo_loss(lp, lp + 0.1, torch.ones(2, dtype=torch.float64), backend=b)[0],
    }


@pytest.mark.parametrize("op", ["linear_logprobs", "linear_ppo_loss", "ppo_loss"])
def test_a_named_backend_that_cannot_serve_float64_raises(op):
    # These used to run the torch backend instead, silently, whatever backend= said.
    call = _float64_calls()[op]
    with pytest.raises(ValueError, match=rf"{op}: backend 'cpu' \(backend\) computes in float32 only, not float64; "
                                         r"for float64 inputs use backend='torch' or backend=None"):
        call("cpu")
    torch.testing.assert_close(call(None), call("torch"), rtol=0, atol=0)


def test_float64_rewards_are_served_by_the_native_advantages():
    r = torch.tensor([1.0, 0, 0, 1], dtype=torch.float64)
    out = ik.group_advantages(r, 4, estimator="passk", k=2, backend="cpu")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ik.group_advantages(r, 4, estimator="passk", k=2, backend="torch"))

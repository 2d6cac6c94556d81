"""Hostile or careless input to the advantage and evaluation ops, the chunk-size setting, and the
automatic backend choice: every bad input is a ValueError naming the argument, or a documented
result; nothing crashes, allocates without bound or silently picks unexecuted code."""

from __future__ import annotations

import pytest
import torch

import ia_kernels as ik
from ia_kernels import _native, backends
from ia_kernels.ops import advantages as adv_ops


# ---- E: unverified backends are not the default ---------------------------------------------------

@pytest.fixture
def cuda_module_built(monkeypatch):
    # The selection logic only asks whether ia_kernels._cuda is importable; no kernel runs here.
    monkeypatch.setattr(_native, "has_cuda_module", lambda: True)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


@pytest.mark.parametrize("op", ["group_advantages", "length_penalized_rewards", "linear_logprobs",
                                "linear_ppo_loss", "ppo_loss"])
def test_cuda_tensors_default_to_torch_until_verified(cuda_module_built, op):
    entry = backends._OPS[op]
    assert entry.select(torch.device("cuda"), None)[0] == "torch"
    for name in ("cuda", "triton"):
        if name in entry.impls and backends._WHY_NOT[name](torch.device("cuda")) is None:
            assert entry.select(torch.device("cuda"), name)[0] == name  # explicit still runs it


def test_explicit_cuda_backend_and_env_var_still_run_it(cuda_module_built, monkeypatch):
    cuda = torch.device("cuda")
    assert adv_ops._OP.select(cuda, "cuda")[0] == "cuda"
    assert adv_ops._LENGTH_OP.select(cuda, "cuda")[0] == "cuda"
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert adv_ops._OP.select(cuda, None)[0] == "cuda"


def test_a_verified_entry_becomes_the_default(cuda_module_built, monkeypatch):
    monkeypatch.setattr(backends, "VERIFIED", backends.VERIFIED | {("group_advantages", "cuda", "cuda")})
    assert adv_ops._OP.select(torch.device("cuda"), None)[0] == "cuda"
    assert adv_ops._LENGTH_OP.select(torch.device("cuda"), None)[0] == "torch"


def test_available_backends_says_why_cuda_is_not_the_default(cuda_module_built):
    info = ik.available_backends(device="cuda")
    assert info["group_advantages"]["torch"] is None
    assert info["group_advantages"]["cuda"] == ("not chosen automatically: not yet verified on cuda "
                                                "(pass backend='cuda' to run it)")
    assert info["length_penalized_rewards"]["cuda"].startswith("not chosen automatically: not yet verified on cuda")
    assert info["group_advantages"]["cpu"] == "runs on CPU tensors only (got cuda)"
    cpu = ik.available_backends("group_advantages", "cpu")["group_advantages"]
    assert cpu["cpu"] is None and cpu["torch"] is None  # verified on CPU: chosen automatically
    assert "not yet verified" in adv_ops._OP.describe(torch.device("cuda"))


def test_cpu_tensors_still_default_to_the_native_cpu_backend(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    if _native.has_cpu_module():
        assert adv_ops._OP.select(torch.device("cpu"), None)[0] == "cpu"

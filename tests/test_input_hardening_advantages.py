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


# ---- A: per-sample inputs and scalar arguments --------------------------------------------------

_LP = dict(correct=torch.ones(4, dtype=torch.bool), lengths=torch.tensor([5.0, 3, 2, 1]), groups=4, alpha=0.1)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([5.0, -3, 2, 1]), r"lengths must be finite and >= 0.*found -3.0 at index 1"),
    (torch.tensor([5, 3, -2, -1]), r"lengths must be finite and >= 0.*found -2.0 at index 2"),
    (torch.tensor([5, 3, 2, -1], dtype=torch.int8), r"lengths must be finite and >= 0.*found -1.0 at index 3"),
    (torch.tensor([5.0, float("nan"), 2, -1]), r"lengths must be finite and >= 0.*found nan at index 1"),
    (torch.tensor([5.0, 3, float("inf"), 1]), r"lengths must be finite and >= 0.*found inf at index 2"),
    (torch.tensor([-0.5, 3, 2, 1], dtype=torch.float16), r"lengths must be finite and >= 0.*found -0.5 at index 0"),
])
def test_length_penalized_rejects_negative_and_non_finite_lengths(backend, lengths, match):
    with pytest.raises(ValueError, match=match):
        ik.length_penalized_rewards(_LP["correct"], lengths, 4, alpha=0.1, backend=backend)


def test_uint8_lengths_above_127_are_lengths_not_negatives():
    lengths = torch.tensor([200, 250, 100, 10], dtype=torch.uint8)
    got = ik.length_penalized_rewards(_LP["correct"], lengths, 4, alpha=0.1)
    want = ik.length_penalized_rewards(_LP["correct"], lengths.to(torch.int64), 4, alpha=0.1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("alpha, match", [
    (float("nan"), r"alpha must lie in \[0, 1\], got nan"),
    (float("inf"), r"alpha must lie in \[0, 1\], got inf"),
    (-0.1, r"alpha must lie in \[0, 1\], got -0.1"),
    (True, r"alpha must be a real number \(int or float\), got bool"),
    ("0.5", r"alpha must be a real number \(int or float\), got str"),
    (None, r"alpha must be a real number \(int or float\), got NoneType"),
])
def test_length_penalized_bad_alpha(alpha, match):
    with pytest.raises(ValueError, match=match):
        ik.length_penalized_rewards(_LP["correct"], _LP["lengths"], 4, alpha=alpha)


@pytest.mark.parametrize("eps, match", [
    (True, r"eps must be a real number \(int or float\), got bool"),
    ("1e-6", r"eps must be a real number \(int or float\), got str"),
    (float("nan"), r"eps must be finite and >= 0, got nan"),
    (float("inf"), r"eps must be finite and >= 0, got inf"),
])
def test_group_advantages_bad_eps(eps, match):
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(torch.rand(4), 4, estimator="grpo", eps=eps)


@pytest.mark.parametrize("k, match", [
    (2.0, r"k must be an int, got float"), (True, r"k must be an int, got bool"),
    ("2", r"k must be an int, got str"), (-1, r"k must be >= 1, got k=-1"),
])
def test_k_must_be_a_positive_int_everywhere(k, match):
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(torch.rand(4), 4, estimator="passk", k=k)
    with pytest.raises(ValueError, match=match):
        ik.pass_at_k(1, 4, k)
    with pytest.raises(ValueError, match=match):
        ik.group_pass_at_k(torch.ones(4, dtype=torch.bool), 4, k)
    with pytest.raises(ValueError, match=match):
        ik.maj_at_k(torch.zeros(4, dtype=torch.int64), torch.ones(4), 4, k)


@pytest.mark.parametrize("groups, match", [
    (0, r"groups \(the group size\) must be >= 1, got 0"),
    (-2, r"groups \(the group size\) must be >= 1, got -2"),
    (3, r"groups=3 does not divide the 4"),
    (True, r"groups must be an int \(the group size\) or an integer tensor of group ids, got bool"),
    (2.0, r"groups must be an int .* got float"),
    (torch.tensor([0.0, 0, 1, 1]), r"groups must be an integer tensor"),
])
def test_bad_groups_in_every_op(groups, match):
    with pytest.raises(ValueError, match=match):
        ik.group_advantages(torch.rand(4), groups, estimator="rloo")
    with pytest.raises(ValueError, match=match):
        ik.length_penalized_rewards(_LP["correct"], _LP["lengths"], groups, alpha=0.1)
    with pytest.raises(ValueError, match=match):
        ik.group_pass_at_k(torch.ones(4, dtype=torch.bool), groups, 1)
    with pytest.raises(ValueError, match=match):
        ik.maj_at_k(torch.zeros(4, dtype=torch.int64), torch.ones(4), groups, 1)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_narrow_and_negative_group_ids_are_labels(backend):
    # Documented: ids are any integer values; uint8 255 and int8 -1 are not confused with each other
    # or with Python ints, because ids are widened to int64 before they are compared.
    r = torch.tensor([0.1, 0.9, 0.3, 0.6], dtype=torch.float64)
    want = torch.tensor([0.1 - 0.9, 0.9 - 0.1, 0.3 - 0.6, 0.6 - 0.3], dtype=torch.float64)
    for ids in (torch.tensor([255, 255, 0, 0], dtype=torch.uint8), torch.tensor([-1, -1, 0, 0], dtype=torch.int8),
                torch.tensor([-(2**40), -(2**40), 7, 7])):
        torch.testing.assert_close(ik.group_advantages(r, ids, estimator="rloo", backend=backend), want,
                                   rtol=0, atol=1e-15)
    # per-sample correctness grouped by uint8 ids: 255 and 127 are two problems, in ascending id order
    assert ik.group_pass_at_k(torch.tensor([1, 0, 0, 0]), torch.tensor([255, 255, 127, 127], dtype=torch.uint8),
                              1).tolist() == [0.0, 0.5]


@pytest.mark.parametrize("call, match", [
    (lambda m: ik.group_advantages(torch.rand(4, device=m), 4, estimator="rloo"), r"rewards is a meta tensor"),
    (lambda m: ik.group_advantages(torch.rand(4), torch.zeros(4, dtype=torch.int64, device=m), estimator="rloo"),
     r"groups is"),
    (lambda m: ik.group_advantages(torch.rand(4), 4, estimator="majority",
                                   answers=torch.zeros(4, dtype=torch.int64, device=m)), r"answers is"),
    (lambda m: ik.length_penalized_rewards(torch.ones(4, device=m), torch.ones(4, device=m), 4, alpha=0.1),
     r"correct is a meta tensor"),
    (lambda m: ik.length_penalized_rewards(torch.ones(4), torch.ones(4, device=m), 4, alpha=0.1),
     r"lengths is a meta tensor"),
    (lambda m: ik.pass_at_k(torch.ones(4, dtype=torch.int64, device=m), 10, 2), r"num_correct is a meta tensor"),
    (lambda m: ik.pass_at_k(1, torch.full((4,), 10, device=m), 2), r"num_samples is a meta tensor"),
    (lambda m: ik.group_pass_at_k(torch.ones(4, device=m), 4, 2), r"correct is a meta tensor"),
    (lambda m: ik.maj_at_k(torch.ones(4, dtype=torch.int64, device=m), torch.ones(4, device=m), 4, 2),
     r"answers is a meta tensor"),
])
def test_meta_tensors_get_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call("meta")


def test_empty_inputs_give_empty_results():
    e = torch.zeros(0)
    assert ik.length_penalized_rewards(e.bool(), e, 4, alpha=0.1).shape == (0,)
    assert ik.length_penalized_rewards(e.bool(), e, torch.zeros(0, dtype=torch.int64), alpha=0.1).shape == (0,)
    assert ik.group_pass_at_k(e.bool(), 4, 2).shape == (0,)
    assert ik.maj_at_k(torch.zeros(0, dtype=torch.int64), e, 4, 2).shape == (0,)
    assert ik.pass_at_k(torch.zeros(0, dtype=torch.int64), 10, 2).shape == (0,)


def test_pass_at_k_int_arguments_out_of_int64_and_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"num_samples=\d+ does not fit in int64"):
        ik.pass_at_k(1, 10**30, 2)
    with pytest.raises(ValueError, match=r"num_samples \(shape \(3,\)\) must broadcast with num_correct"):
        ik.pass_at_k(torch.tensor([1, 2]), torch.tensor([5, 5, 5]), 2)
    # int8 / uint8 counts are widened before the checks: 200 of 250 is valid, -3 samples is not.
    assert ik.pass_at_k(torch.tensor([200], dtype=torch.uint8), torch.tensor([250], dtype=torch.uint8), 51).item() == 1.0
    with pytest.raises(ValueError, match=r"num_samples must be >= k=2 for every problem; smallest is -3"):
        ik.pass_at_k(torch.tensor([1], dtype=torch.int8), torch.tensor([-3], dtype=torch.int8), 2)


# ---- B: chunk sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["64MB", "-5", "0", "1e9", "1.5", "0x100", "²"])
def test_malformed_chunk_bytes_variable_names_itself(monkeypatch, value):
    monkeypatch.setenv("IA_KERNELS_CHUNK_BYTES", value)
    hidden, weight, targets = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"IA_KERNELS_CHUNK_BYTES=.* must be a positive integer number of bytes"):
        ik.linear_logprobs(hidden, weight, targets, backend="torch")


def test_chunk_bytes_variable_sets_the_rows(monkeypatch):
    from ia_kernels.ops._lm_head import chunk_rows
    monkeypatch.setenv("IA_KERNELS_CHUNK_BYTES", " 4000 ")
    assert chunk_rows(1000, 10, torch.device("cpu"), None) == 100  # 4000 bytes / (4 * 10)
    monkeypatch.setenv("IA_KERNELS_CHUNK_BYTES", "")
    assert chunk_rows(10**6, 1000, torch.device("cpu"), None) == (64 << 20) // 4000  # the CPU default


@pytest.mark.parametrize("chunk_size, match", [
    (True, r"chunk_size must be an int .* got bool"), (2.5, r"chunk_size must be an int .* got float"),
    ("8", r"chunk_size must be an int .* got str"), (0, r"chunk_size must be >= 1, got 0"),
    (float("nan"), r"chunk_size must be an int .* got float"),
])
def test_bad_chunk_size(chunk_size, match):
    hidden, weight, targets = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=match):
        ik.linear_logprobs(hidden, weight, targets, backend="torch", chunk_size=chunk_size)

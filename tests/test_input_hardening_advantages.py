"""Hostile or careless input to the advantage and evaluation ops, the chunk-size setting, and the
automatic backend choice: every bad input is a ValueError naming the argument, or a documented
result; nothing crashes, allocates without bound or silently picks unexecuted code."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest
import torch

import ia_kernels as ik
from ia_kernels import _native, backends
from ia_kernels.ops import advantages as adv_ops
from ia_kernels.ops import eval_metrics


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
    assert entry.select(torch.device("cuda"), backend=None)[0] == "torch"
    for name in ("cuda", "triton"):
        if name in entry.impls and backends._WHY_NOT[name](torch.device("cuda")) is None:
            assert entry.select(torch.device("cuda"), backend=name)[0] == name  # explicit still runs it


def test_explicit_cuda_backend_and_env_var_still_run_it(cuda_module_built, monkeypatch):
    cuda = torch.device("cuda")
    assert adv_ops._OP.select(cuda, backend="cuda")[0] == "cuda"
    assert adv_ops._LENGTH_OP.select(cuda, backend="cuda")[0] == "cuda"
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert adv_ops._OP.select(cuda, backend=None)[0] == "cuda"


def test_a_verified_entry_becomes_the_default(cuda_module_built, monkeypatch):
    monkeypatch.setattr(backends, "VERIFIED", backends.VERIFIED | {("group_advantages", "cuda", "cuda")})
    assert adv_ops._OP.select(torch.device("cuda"), backend=None)[0] == "cuda"
    assert adv_ops._LENGTH_OP.select(torch.device("cuda"), backend=None)[0] == "torch"


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
        assert adv_ops._OP.select(torch.device("cpu"), backend=None)[0] == "cpu"


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
    from ia_kernels.core.chunks import chunk_rows
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


# ---- C: pass_at_k at large n, in bounded memory -------------------------------------------------

def _exact_miss(c, n, k):
    """C(n-c, k) / C(n, k) in exact rational arithmetic (0 when n - c < k)."""
    return Fraction(math.comb(n - c, k), math.comb(n, k))


def _rel(got: float, exact: Fraction) -> float:
    return float(abs(Fraction(got) - exact) / exact)


@pytest.mark.parametrize("c, n, k", [
    (1000, 10**6, 1000),       # pass@k ~ 0.63
    (3000, 10**6, 2000),       # miss ~ 2.4e-3
    (5 * 10**5, 10**6, 1000),  # miss ~ 5.7e-302: pass@k rounds to 1
    (123, 5000, 4000), (30, 100, 70), (70, 100, 30), (40000, 10**7, 50000),
])
@pytest.mark.parametrize("form", ["product", "stirling"])
def test_pass_at_k_matches_exact_rationals_at_large_n(monkeypatch, c, n, k, form):
    if form == "stirling":  # every problem with more than 4 factors takes the log-gamma form
        monkeypatch.setattr(eval_metrics, "_PRODUCT_MAX_WIDTH", 4)
    exact = _exact_miss(c, n, k)
    got = ik.pass_at_k(torch.tensor([c, c]), torch.tensor([n, n]), k)
    assert got.tolist() == [got[0].item()] * 2
    assert _rel(got[0].item(), 1 - exact) < 1e-13  # the public value, pass@k = 1 - miss
    t = lambda v: torch.tensor([v])  # noqa: E731
    if form == "product":  # the miss ratio itself, where 1 - pass@k would lose it to rounding
        miss = eval_metrics._miss_product(t(n), t(c), k, t(min(c, k))).item()
        assert _rel(miss, exact) < 1e-14
    else:
        log_exact = math.log(exact.numerator) - math.log(exact.denominator)
        assert abs(eval_metrics._log_miss_wide(t(n), t(c), k).item() - log_exact) < 1e-10


def test_pass_at_k_wide_problem_matches_an_exactly_summed_log():
    # c = k = 1e5 > 65536: the Stirling form. Independent check: sum_j log1p(-c/(n-j)) summed exactly.
    c, n, k = 10**5, 10**9, 10**5
    log_miss = math.fsum(math.log1p(-c / (n - j)) for j in range(k))
    got = ik.pass_at_k(c, n, k).item()
    assert abs((1 - got) / math.exp(log_miss) - 1) < 1e-9


def test_pass_at_k_block_boundaries_and_mixed_widths():
    # Widths around the 4096-factor blocks and rows of very different widths in one call.
    cs = [0, 1, 4095, 4096, 4097, 9000, 70000, 10**6 - 1000]
    n, k = 10**6, 12000
    got = ik.pass_at_k(torch.tensor(cs), n, k).tolist()
    for c, g in zip(cs, got):
        want = 1 - _exact_miss(c, n, k) if n - c >= k else Fraction(1)
        assert abs(Fraction(g) - want) <= Fraction(1, 10**13) * max(want, 1 - want) + Fraction(1, 10**300), c


def test_pass_at_k_huge_counts_run_in_bounded_memory():
    # Before: a [G, max(c)] float64 matrix, 4 GB for c = 5e8. Now: under a 1 GiB address-space
    # headroom, in seconds, with the exact value 1 - (n-c)(n-c-1)(n-c-2) / (n(n-1)(n-2)).
    code = textwrap.dedent("""
        import resource, torch, ia_kernels as ik
        vm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize')][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
        a = ik.pass_at_k(5 * 10**8, 10**9, 3).item()
        b = ik.pass_at_k(torch.tensor([6 * 10**4, 10**5, 3 * 10**8]), 10**9, 6 * 10**4).tolist()
        print(repr(a), repr(b))
    """)
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = (eval(x) for x in res.stdout.strip().split(" ", 1))
    exact = 1 - Fraction((5 * 10**8) * (5 * 10**8 - 1) * (5 * 10**8 - 2), 10**9 * (10**9 - 1) * (10**9 - 2))
    assert _rel(a, exact) < 1e-15
    n, k = 10**9, 6 * 10**4
    for c, got in zip([6 * 10**4, 10**5], b):  # miss = prod_{j<k} (1 - c/(n-j)), its log summed exactly
        miss = math.exp(math.fsum(math.log1p(-c / (n - j)) for j in range(k)))
        assert abs((1 - got) / miss - 1) < 1e-9
    assert b[2] == 1.0  # a miss of ~e^-18000


# ---- D: maj_at_k's bound ---------------------------------------------------------------------------

def test_maj_at_k_refuses_k_whose_dp_needs_more_than_a_gib():
    # Before: k = 1000 tried to allocate [1000, 1001, 1001] float64 arrays several times (~24 GiB).
    with pytest.raises(ValueError, match=r"k=1000 is too large for maj_at_k's exact dynamic programme: it needs "
                                         r"about 24\.4 GiB or more \(limit 1 GiB"):
        ik.maj_at_k(torch.zeros(1000, dtype=torch.int64), torch.ones(1000), 1000, 1000)
    # k = 300 fits with one distinct answer (0.67 GiB) but not with 300 (1.9 GiB): named per problem.
    answers = torch.cat([torch.zeros(300, dtype=torch.int64), torch.arange(300)])
    with pytest.raises(ValueError, match=r"k=300 is too large .* with 300 distinct answers \(problem 1\): it needs "
                                         r"about 1\.9 GiB"):
        ik.maj_at_k(answers, torch.ones(600), 300, 300)


def test_maj_at_k_memory_model_matches_the_documented_bound():
    limit = eval_metrics.MAJ_AT_K_MAX_BYTES
    assert limit == 1 << 30
    # the documented thresholds: k <= 343 with one distinct answer, k <= 243 when all differ
    assert eval_metrics._maj_dp_bytes(343, 1) <= limit < eval_metrics._maj_dp_bytes(344, 1)
    assert eval_metrics._maj_dp_bytes(243, 243) <= limit < eval_metrics._maj_dp_bytes(244, 244)


def test_maj_at_k_dp_stays_within_its_memory_model():
    # The model is the measured peak of the DP's numpy arrays: check it still covers the code.
    tracemalloc = pytest.importorskip("tracemalloc")
    for k, m in [(60, 3), (60, 60)]:
        counts = [k // m + 1] * m
        tracemalloc.start()
        try:
            eval_metrics._maj_at_k_one(counts, [1.0] * m, k)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= eval_metrics._maj_dp_bytes(k, m), (k, m, peak)


def test_eval_counts_name_the_argument_the_caller_passed():
    with pytest.raises(ValueError, match=r"k=3 is larger than the smallest problem's 2 samples"):
        ik.group_pass_at_k(torch.ones(4, dtype=torch.bool), 2, 3)
    with pytest.raises(ValueError, match=r"num_correct must be an int or an integer tensor, got float"):
        ik.pass_at_k(2.0, 4, 2)
    with pytest.raises(ValueError, match=r"num_samples must be an int or an integer tensor, got list"):
        ik.pass_at_k(2, [4], 2)

"""paged_attention against its float64 definition (reference/paged_attention.py) on random, odd-shaped
paged caches: shuffled block tables, grouped-query heads, decode rows (one query) mixed with
prefill chunks (many queries) in one call; and every bad input refused with a message that names it."""

import pytest
import torch

import ia_kernels as ik
from ia_kernels.reference.paged_attention import paged_attention as reference

BACKENDS = ["torch", "cpu"]


def random_cache(q_lens, seqlens, heads, kv_heads, head_dim, block_size, seed, dtype=torch.float32, spare=3):
    """A cache whose rows own shuffled, non-contiguous blocks (plus unused spare blocks), and the
    packed queries of each row."""
    g = torch.Generator().manual_seed(seed)
    need = [(s + block_size - 1) // block_size for s in seqlens]
    num_blocks = sum(need) + spare
    order = torch.randperm(num_blocks, generator=g).tolist()
    max_blocks = max(need) + 1
    table = torch.full((len(seqlens), max_blocks), -7, dtype=torch.int32)  # junk past each row's blocks
    at = 0
    for b, n in enumerate(need):
        table[b, :n] = torch.tensor(order[at:at + n], dtype=torch.int32)
        at += n
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g, dtype=dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g, dtype=dtype)
    q = torch.randn(sum(q_lens), heads, head_dim, generator=g, dtype=dtype) * 2
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()), dtype=torch.int64)
    return q, k, v, table, torch.tensor(seqlens), cu


CASES = [  # (q_lens, seqlens, heads, kv_heads, head_dim, block_size)
    ([1, 1, 1], [1, 7, 40], 4, 4, 8, 4),            # decode, the first row at its first token
    ([1, 5, 1, 13], [33, 5, 17, 29], 6, 2, 12, 8),  # prefill chunks beside decode rows, GQA 3:1
    ([2, 1], [3, 70], 9, 3, 64, 16),                 # SmolLM2's head shape (9 heads, 3 kv heads, 64)
    ([1, 1], [257, 3], 2, 1, 5, 256),                # a head_dim that is not a multiple of 8, big blocks
    ([0, 3], [4, 3], 2, 2, 16, 2),                   # a row without queries this step
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_equals_the_float64_definition(backend, case):
    q, k, v, table, lens, cu = random_cache(*case, seed=hash(str(case)) % 1000)
    out = ik.paged_attention(q, k, v, table, lens, cu, backend=backend)
    ref = reference(q, k, v, table.clamp(min=0), lens, cu)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_form_and_custom_scale(backend):
    q, k, v, table, lens, cu = random_cache([1, 1, 1, 1], [9, 1, 30, 16], 4, 2, 16, 8, seed=3)
    out = ik.paged_attention(q, k, v, table, lens, scale=0.3, backend=backend)  # cu_seqlens_q=None: one each
    torch.testing.assert_close(out.double(), reference(q, k, v, table.clamp(min=0), lens, cu, scale=0.3),
                               atol=2e-6, rtol=2e-5)


def test_float64_runs_on_the_torch_backend_and_the_cpu_backend_refuses_it():
    q, k, v, table, lens, cu = random_cache([2, 1], [5, 11], 2, 1, 8, 4, seed=5, dtype=torch.float64)
    out = ik.paged_attention(q, k, v, table, lens, cu)
    torch.testing.assert_close(out, reference(q, k, v, table.clamp(min=0), lens, cu), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="backend 'cpu' .* computes in float32 only, not float64"):
        ik.paged_attention(q, k, v, table, lens, cu, backend="cpu")


def test_the_cpu_backend_is_chosen_on_cpu_and_agrees_with_torch_on_a_long_cache():
    q, k, v, table, lens, cu = random_cache([1] * 16, [1000 + 37 * i for i in range(16)], 9, 3, 64, 32, seed=9)
    fast = ik.paged_attention(q, k, v, table, lens, cu)
    slow = ik.paged_attention(q, k, v, table, lens, cu, backend="torch")
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    assert ik.available_backends("paged_attention", "cpu")["paged_attention"]["cpu"] is None


def test_nan_reaches_the_output_of_its_row_only():
    q, k, v, table, lens, cu = random_cache([1, 1], [6, 6], 2, 2, 8, 4, seed=1)
    k[table[0, 0], 2, 0, 3] = float("nan")
    out = ik.paged_attention(q, k, v, table, lens, cu, backend="cpu")
    assert torch.isnan(out[0, 0]).all() and torch.isfinite(out[1]).all()


def _good():
    return random_cache([1, 2], [5, 6], 4, 2, 8, 4, seed=2)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(q=a["q"][0]), r"q must be \[tokens, heads, head_dim\]"),
    (lambda a: a.update(q=a["q"].to(torch.int64)), "q must be a floating-point tensor"),
    (lambda a: a.update(v_cache=a["v_cache"][:-1]), "v_cache has shape .* but k_cache"),
    (lambda a: a.update(q=a["q"][:, :3]), "3 heads must be a multiple of the cache's 2 kv heads"),
    (lambda a: a.update(q=a["q"][..., :4]), "q's head_dim is 4 but the cache's is 8"),
    (lambda a: a.update(q=a["q"].double()), "must share a dtype"),
    (lambda a: a.update(block_table=a["block_table"].float()), "block_table must be an integer tensor"),
    (lambda a: a.update(seqlens=a["seqlens"][:1]), "seqlens has 1 rows but block_table 2"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 1])), r"cu_seqlens_q must have rows \+ 1 = 3 entries"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 2, 5])), "cu_seqlens_q must rise from 0 to the 3 query tokens"),
    (lambda a: a.update(seqlens=torch.tensor([5, 99])), r"seqlens\[1\] = 99 must lie between that row's 2 queries and "
                                                        "the 12 positions its block table holds"),
    (lambda a: a.update(seqlens=torch.tensor([0, 6])), r"seqlens\[0\] = 0 must lie between that row's 1 queries"),
    (lambda a: a["block_table"].__setitem__((1, 0), 10**6), "block_table names a block outside the cache's"),
    (lambda a: a["block_table"].__setitem__((1, 1), -1), "block_table names a block outside the cache's"),
    (lambda a: a.update(scale=float("nan")), "scale must be"),
])
def test_bad_inputs_are_named(change, message):
    q, k, v, table, lens, cu = _good()
    args = dict(q=q, k_cache=k, v_cache=v, block_table=table, seqlens=lens, cu_seqlens_q=cu)
    change(args)
    with pytest.raises(ValueError, match=message):
        ik.paged_attention(**args)


def test_no_gradient():
    q, k, v, table, lens, cu = _good()
    with pytest.raises(ValueError, match="q requires grad: paged_attention is for sampling"):
        ik.paged_attention(q.requires_grad_(), k, v, table, lens, cu)
    with torch.no_grad():
        ik.paged_attention(q, k, v, table, lens, cu)


def test_no_queries():
    q, k, v, table, lens, cu = _good()
    out = ik.paged_attention(q[:0], k, v, table, lens, torch.zeros(3, dtype=torch.int64), backend="cpu")
    assert out.shape == (0, 4, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_plan_serves_every_layer(backend):
    """The rows are checked once per step (PagedAttentionPlan), each layer's cache through run()."""
    q, k, v, table, lens, cu = random_cache([1, 4, 1], [9, 4, 30], 4, 2, 16, 8, seed=11)
    plan = ik.PagedAttentionPlan(table, lens, cu, num_blocks=k.shape[0], block_size=k.shape[1])
    for layer in range(3):
        k2, v2 = k * (layer + 1), v - layer
        torch.testing.assert_close(plan.run(q, k2, v2, backend=backend),
                                   ik.paged_attention(q, k2, v2, table, lens, cu, backend=backend))
    with pytest.raises(ValueError, match="q has 5 tokens but the plan's rows hold 6 queries"):
        plan.run(q[:5], k, v)
    with pytest.raises(ValueError, match="k_cache holds .* blocks of 8 positions but the plan was made for"):
        plan.run(q, k[:-1], v[:-1])
    with pytest.raises(ValueError, match="block_table must be a torch.Tensor"):
        ik.paged_attention(q, k, v, table.tolist(), lens, cu)

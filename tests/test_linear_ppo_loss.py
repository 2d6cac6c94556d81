"""linear_ppo_loss: equal to ppo_loss(linear_logprobs(...)) for every option and backend, to the float64
reference, to Liger-Kernel's LigerFusedLinearGRPOLoss on the settings they share; gradcheck, masking,
bad input.

Chunks are set smaller than a sequence (chunk_size=6 rows with T=7) so that chunk and sequence
boundaries never line up.
"""

import pytest
import torch

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

from test_ppo_loss import OPTIONS, _CountSyncs

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
BACKENDS = ["torch", "cpu", TRITON]
LENGTHS = [7, 1, 0, 5, 3]


def make_problem(lengths=LENGTHS, T=7, H=37, V=203, dtype=torch.float32, temperature=0.7, seed=0, bias=True,
                 per_token_adv=False):
    """Hidden states, LM head, sampled targets; old/ref log-probs near the true ones (ratios spread
    wide enough that the clips fire); padding targets -100 or garbage ids, padding old_logp NaN."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * (2.0 / H**0.5)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[~mask] = -100
    if B > 3 and not mask[3, -1]:
        targets[3, -1] = V + 5  # garbage on a masked token is fine
    logp = ref.linear_logprobs(hidden, weight, targets.clamp(0, V - 1), bias=b, temperature=temperature)
    shift = 0.4 * torch.randn(B, 1, generator=g, dtype=torch.float64)
    old = (logp + shift + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)).masked_fill(~mask, float("nan"))
    ref_logp = (logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).masked_fill(~mask, float("nan"))
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if per_token_adv else \
        torch.randn(B, generator=g, dtype=torch.float64)
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return dict(hidden=cast(hidden), weight=cast(weight), bias=cast(b), targets=targets, old_logp=old.float(),
                advantages=adv.float(), mask=mask, ref_logp=ref_logp.float(), temperature=temperature)


def run(fn, p, **options):
    """(loss, grad hidden, grad weight, grad bias, metrics) of fn(hidden, weight, bias, p, **options)."""
    leaves = [p[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias") if p[k] is not None]
    if p["bias"] is None:
        leaves.append(None)
    loss, metrics = fn(*leaves, p, **options)
    grads = torch.autograd.grad(loss, [x for x in leaves if x is not None])
    return [loss.detach()] + list(grads) + [metrics]


def fused(hidden, weight, bias, p, chunk_size=6, **options):
    return ik.linear_ppo_loss(hidden, weight, p["targets"], p["old_logp"], p["advantages"], p["mask"], bias=bias,
                              temperature=p["temperature"], ref_logp=p["ref_logp"], chunk_size=chunk_size, **options)


def composed(hidden, weight, bias, p, **options):
    """What a user writes without the fused op: linear_logprobs, then ppo_loss."""
    targets = torch.where(p["mask"], p["targets"], -100)
    logp, entropy = ik.linear_logprobs(hidden, weight, targets, bias=bias, temperature=p["temperature"],
                                       return_entropy=True)
    options = {k: v for k, v in options.items() if k != "backend"}
    return ik.ppo_loss(logp, p["old_logp"], p["advantages"], p["mask"], ref_logp=p["ref_logp"], entropy=entropy,
                       **options)


def reference(hidden, weight, bias, p, **options):
    options = {k: v for k, v in options.items() if k != "backend"}
    f64 = lambda x: None if x is None else x.double()  # noqa: E731
    return ref.linear_ppo_loss(f64(hidden), f64(weight), p["targets"], p["old_logp"].double(),
                               p["advantages"].double(), p["mask"], bias=f64(bias), temperature=p["temperature"],
                               ref_logp=p["ref_logp"].double(), **options)


def assert_same(got, want, atol, rtol=1e-4):
    for a, b in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)
    assert set(got[-1]) == set(want[-1])
    for key in want[-1]:
        torch.testing.assert_close(got[-1][key].double(), want[-1][key].double(), atol=atol, rtol=rtol, msg=key)


# The Triton interpreter is slow: it gets the options that switch kernel code paths on and off.
TRITON_OPTIONS = ["default", "dual-clip", "kl-k2", "entropy", "dr-grpo-norm32", "gspo-everything", "everything"]
EQUALS_CASES = [(b, n) for b in ("torch", "cpu") for n in OPTIONS] + [(TRITON.values[0], n) for n in TRITON_OPTIONS]


@pytest.mark.parametrize("backend,name", [
    pytest.param(b, n, marks=TRITON.marks if b == "triton" else ()) for b, n in EQUALS_CASES])
def test_equals_ppo_loss_of_linear_logprobs(backend, name):
    p = make_problem(per_token_adv=name.startswith("kl"))
    assert_same(run(fused, p, backend=backend, **OPTIONS[name]), run(composed, p, **OPTIONS[name]), atol=2e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 12, 100])
@pytest.mark.parametrize("backend", ["torch", "cpu", TRITON])
@pytest.mark.parametrize("lengths", [LENGTHS, [7, 7, 7]], ids=["padded", "no-padding"])
@pytest.mark.parametrize("name", ["gspo-everything", "everything"])
def test_chunkings(name, lengths, backend, chunk_size):
    """Every way of cutting the rows: GSPO runs in one pass when chunks hold whole sequences
    (chunk_size >= 7 here), in two phases otherwise; with and without padding to drop."""
    if backend == "triton" and chunk_size not in (3, 12):
        pytest.skip("the Triton interpreter is slow: two chunkings suffice")
    p = make_problem(lengths=lengths)
    assert_same(run(fused, p, backend=backend, chunk_size=chunk_size, **OPTIONS[name]),
                run(composed, p, **OPTIONS[name]), atol=2e-6)


@pytest.mark.parametrize("name", ["default", "dual-clip", "kl-k3", "entropy", "dr-grpo", "gspo", "gspo-everything",
                                  "everything"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_reference(backend, name):
    p = make_problem(per_token_adv=True)
    assert_same(run(fused, p, backend=backend, **OPTIONS[name]), run(reference, p, **OPTIONS[name]), atol=5e-6)


@pytest.mark.parametrize("name", ["default", "gspo-everything"])
def test_bf16_error_within_twice_eager(name):
    """docs/design.md's rule: error vs float64 at most 2x plain PyTorch's in the same dtype (bf16 GEMM,
    fp32 log-softmax and loss), plus a small atol."""
    p = make_problem(dtype=torch.bfloat16, H=64, V=301)

    def eager_bf16(hidden, weight, bias, p, **options):
        logits = (hidden @ weight.T + bias).float() / p["temperature"]
        logprobs = torch.log_softmax(logits, -1)
        t = torch.where(p["mask"], p["targets"], 0)
        logp = logprobs.gather(-1, t[..., None]).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        return ref.ppo_loss(logp, p["old_logp"], p["advantages"], p["mask"], ref_logp=p["ref_logp"], entropy=entropy,
                            dtype=torch.float32, **options)

    want = run(reference, p, **OPTIONS[name])
    got = run(fused, p, **OPTIONS[name])
    base = run(eager_bf16, p, **OPTIONS[name])
    for g, b, w in zip(got[:-1], base[:-1], want[:-1]):
        err = (g.double() - w).abs().max().item()
        err_eager = (b.double() - w).abs().max().item()
        assert err <= 2 * err_eager + 1e-5 * w.abs().max().item() + 1e-6, (err, err_eager)


@pytest.mark.parametrize("name", ["default", "everything", "gspo-everything"])
def test_gradcheck_float64(name):
    p = make_problem(lengths=[3, 0, 2], T=3, H=4, V=6, dtype=torch.float64, per_token_adv=True)
    p["old_logp"], p["ref_logp"], p["advantages"] = (p[k].double() for k in ("old_logp", "ref_logp", "advantages"))

    def fn(hidden, weight, bias):
        return ik.linear_ppo_loss(hidden, weight, p["targets"], p["old_logp"], p["advantages"], p["mask"], bias=bias,
                                  temperature=p["temperature"], ref_logp=p["ref_logp"], chunk_size=2,
                                  **OPTIONS[name])[0]

    inputs = tuple(p[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_masked_rows_get_no_gradient_and_no_nan(backend, importance):
    p = make_problem()
    loss, gh, gw, gb, metrics = run(fused, p, backend=backend, importance=importance, kl_coef=0.1, entropy_coef=0.1)
    assert torch.isfinite(loss) and torch.isfinite(gw).all() and torch.isfinite(gb).all()
    assert torch.all(gh[~p["mask"]] == 0) and gh[p["mask"]].abs().sum() > 0
    assert all(torch.isfinite(v) for v in metrics.values())
    empty = make_problem(lengths=[0, 0], T=3)
    loss, gh, gw, gb, metrics = run(fused, empty, backend=backend, importance=importance)
    assert loss.item() == 0 and not gh.any() and not gw.any() and not gb.any()
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_no_grad_and_retain_graph(importance):
    p = make_problem(bias=False)
    want = run(fused, p, importance=importance)
    with torch.no_grad():
        loss, _ = fused(p["hidden"], p["weight"], None, p, importance=importance)
    torch.testing.assert_close(loss, want[0])
    h = p["hidden"].clone().requires_grad_()
    loss, _ = fused(h, p["weight"], None, p, importance=importance)
    (loss * 2).backward(retain_graph=True)
    (loss * 3).backward()  # the stored gradients survived the first backward
    torch.testing.assert_close(h.grad, 5 * want[1])


@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_one_host_sync_at_validation(importance, monkeypatch):
    """One tolist() (validation flags + per-sequence token counts), nothing else that waits for values."""
    tolist_calls = []
    tolist = torch.Tensor.tolist

    def counting_tolist(self):
        tolist_calls.append(self.shape)
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    p = make_problem()
    h = p["hidden"].clone().requires_grad_()
    for check_finite in (True, False):
        tolist_calls.clear()
        with _CountSyncs() as mode:
            loss, metrics = fused(h, p["weight"], p["bias"], p, check_finite=check_finite, kl_coef=0.1,
                                  importance=importance)
            loss.backward()
        assert mode.syncs == [] and len(tolist_calls) == 1


BAD = [
    (dict(hidden=torch.zeros(35, 37)), r"hidden must have shape \[B, T, H\]"),
    (dict(targets=torch.zeros(5, 6, dtype=torch.long)), r"targets must have shape \(5, 7\)"),
    (dict(old_logp=torch.zeros(5, 6)), r"old_logp must have shape \(5, 7\)"),
    (dict(advantages=torch.zeros(7)), r"advantages must have shape \(5,\)"),
    (dict(mask=torch.ones(7, 5, dtype=torch.bool)), r"mask must have shape \(5, 7\)"),
    (dict(weight=torch.zeros(203, 36)), r"weight must have shape \[V, 37\]"),
    (dict(targets_at=((0, 0), 203)), r"targets must lie in \[0, 203\) on valid tokens .* found 203"),
    (dict(advantages_at=(3, float("nan"))), r"advantages must be finite on valid tokens: .* index \(3,\)"),
    (dict(clip_low=0.0), r"clip_low must be finite and > 0"),
    (dict(clip_high=-1.0), r"clip_high must be finite and > 0"),
    (dict(aggregation="mean"), r"aggregation must be one of"),
    (dict(kl_estimator="k5", kl_coef=0.1), r"kl_estimator must be one of"),
    (dict(importance="tokens"), r"importance must be one of"),
    (dict(temperature=0.0), r"temperature must be finite and > 0"),
]


@pytest.mark.parametrize("changes,match", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_raises(changes, match):
    p = make_problem()
    args = {k: p[k] for k in ("hidden", "weight", "targets", "old_logp", "advantages", "mask")}
    kwargs = dict(bias=p["bias"], temperature=p["temperature"])
    for k, v in changes.items():
        if k == "targets_at":
            args["targets"] = args["targets"].clone()
            args["targets"][v[0]] = v[1]
        elif k == "advantages_at":
            args["advantages"] = args["advantages"].clone()
            args["advantages"][v[0]] = v[1]
        elif k in args:
            args[k] = v
        else:
            kwargs[k] = v
    with pytest.raises(ValueError, match=match):
        ik.linear_ppo_loss(*args.values(), **kwargs)


def test_masked_advantage_may_be_nan():
    """Advantages of fully masked sequences are never used, so NaN there is not an error."""
    p = make_problem()
    p["advantages"][2] = float("nan")  # sequence 2 has length 0
    loss, *_ = run(fused, p)
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------------------------------
# Liger-Kernel's LigerFusedLinearGRPOLoss (liger_kernel.chunked_loss). Its GRPO loss is chunked
# PyTorch (a custom chunked log-prob autograd Function, torch.compile optional), so with
# compiled=False it runs on CPU tensors as is: no Triton involved.
#
# Differences from ia_kernels' definitions, kept out of the compared batches:
# - Liger's "grpo"/"dr_grpo" divide by the batch size B, counting fully masked sequences; ia_kernels
#   counts sequences with a valid token: the batches have no empty sequence.
# - Liger has no entropy bonus; its KL is k3 only; its "delta" caps the ratio of the unclipped
#   branch, equal to dual_clip = delta when delta > 1 + clip_high.
# - Liger's clip metric is one fraction (low or high region, counted per token also under sequence
#   importance, as ours); ours are separate: compared as their sum.

LIGER_CASES = {
    "bnpo": (dict(loss_type="bnpo"), dict(aggregation="token-mean")),
    "dapo-clip-higher": (dict(loss_type="dapo", epsilon_high=0.28), dict(aggregation="token-mean", clip_high=0.28)),
    "grpo": (dict(loss_type="grpo"), dict(aggregation="seq-mean-token-mean")),
    "dr_grpo": (dict(loss_type="dr_grpo", max_completion_length=12),
                dict(aggregation="seq-mean-token-sum-norm", norm_length=12)),
    "grpo-kl": (dict(loss_type="grpo", beta=0.04), dict(aggregation="seq-mean-token-mean", kl_coef=0.04)),
    "bnpo-delta": (dict(loss_type="bnpo", delta=1.5), dict(aggregation="token-mean", dual_clip=1.5)),
    "gspo": (dict(loss_type="grpo", importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4),
             dict(aggregation="seq-mean-token-mean", importance="sequence", clip_low=3e-4, clip_high=4e-4)),
}


@pytest.mark.parametrize("case", list(LIGER_CASES))
def test_matches_liger_fused_linear_grpo(case):
    chunked = pytest.importorskip("liger_kernel.chunked_loss")
    liger_kw, our_kw = LIGER_CASES[case]
    p = make_problem(lengths=[7, 2, 5, 3], T=7, bias=False)
    p["old_logp"] = p["old_logp"].nan_to_num(0.0)  # Liger multiplies by the mask: padding must be finite
    p["ref_logp"] = p["ref_logp"].nan_to_num(0.0)
    beta = liger_kw.pop("beta", 0.0)
    loss_fn = chunked.LigerFusedLinearGRPOLoss(beta=beta, compiled=False, use_ref_model=beta != 0, chunk_size=2,
                                               temperature=p["temperature"], **liger_kw)

    def liger(hidden, weight, bias, p):
        loss, metrics = loss_fn(hidden, weight, torch.where(p["mask"], p["targets"], 0), p["mask"].long(),
                                p["advantages"], ref_per_token_logps=p["ref_logp"] if beta else None,
                                old_per_token_logps=p["old_logp"], num_items_in_batch=p["mask"].sum())
        return loss, metrics

    want = run(liger, p)
    got = run(fused, p, **our_kw)
    for a, b in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    liger_metrics = list(want[-1])
    if beta:
        torch.testing.assert_close(got[-1]["kl_ref"], liger_metrics.pop(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[-1]["clip_frac_low"] + got[-1]["clip_frac_high"], liger_metrics[0])

"""The loss options that trainers need (TRL, verl, vLLM rollouts), on every backend, against the float64
reference (ia_kernels/reference/ppo.py, logprobs.py): on-policy old_logp=None (and that the fused
loss keeps its one pass), TRL's loss-type presets and explicit normalisers, norm_length for any
aggregation, the KL term times the importance ratio, per-token importance weights, [B, 1]
advantages, a model's logit scale / soft cap, and bf16 hidden states with an fp32 LM head."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

from test_linear_ppo_loss import fused, make_problem, reference, run

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
BACKENDS = ["torch", "cpu", TRITON]

OPTION_SETS = {
    "on-policy": dict(old_logp=None),
    "trl-grpo": dict(aggregation="grpo"),
    "trl-bnpo": dict(aggregation="bnpo"),
    "trl-dr_grpo": dict(aggregation="dr_grpo", norm_length=9),
    "trl-dapo-num_tokens": dict(aggregation="dapo", num_tokens=23.0),
    "trl-luspo": dict(aggregation="luspo"),
    "num_sequences": dict(aggregation="seq-mean-token-mean", num_sequences=6),
    "token-mean-norm_length": dict(aggregation="token-mean", norm_length=8),
    "seq-mean-token-mean-norm_length": dict(aggregation="seq-mean-token-mean", norm_length=8),
    "kl-times-ratio": dict(kl_coef=0.2, kl_times_ratio=True, clip_high=0.28),
    "kl-times-ratio-gspo": dict(kl_coef=0.2, kl_times_ratio=True, importance="sequence"),
    "importance-weights": dict(importance_weights="random", kl_coef=0.1, entropy_coef=0.01),
    "advantages-B1": dict(advantages_b1=True, dual_clip=3.0),
}


def _options(p, opts):
    opts = dict(opts)
    if opts.pop("advantages_b1", False):
        p = {**p, "advantages": p["advantages"][:, None]}
    if opts.get("importance_weights") == "random":
        g = torch.Generator().manual_seed(3)
        opts["importance_weights"] = torch.rand(p["mask"].shape, generator=g) * 2
    if "old_logp" in opts:
        p = {**p, "old_logp": opts.pop("old_logp")}
    return p, opts


def _reference(hidden, weight, bias, p, **options):
    if p["old_logp"] is not None:
        return reference(hidden, weight, bias, p, **options)
    f64 = lambda x: None if x is None else x.double()  # noqa: E731
    options = {k: v for k, v in options.items() if k != "backend"}
    return ref.linear_ppo_loss(f64(hidden), f64(weight), p["targets"], None, p["advantages"].double(), p["mask"],
                               bias=f64(bias), temperature=p["temperature"], ref_logp=p["ref_logp"].double(),
                               **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_linear_ppo_loss_options_match_the_float64_reference(backend, name):
    p, opts = _options(make_problem(), OPTION_SETS[name])
    want = run(_reference, p, **opts)
    got = run(fused, p, backend=backend, **opts)
    for i, what in enumerate(["loss", "grad_hidden", "grad_weight", "grad_bias"]):
        scale = want[i].abs().max().clamp(min=1e-3)
        err = ((got[i].double() - want[i]).abs().max() / scale).item()
        assert err < 2e-5, f"{name}/{backend}: {what} relative error {err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_ppo_loss_options_match_the_float64_reference(backend, name):
    p, opts = _options(make_problem(), OPTION_SETS[name])
    g = torch.Generator().manual_seed(9)
    B, T = p["mask"].shape
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    entropy = torch.rand(B, T, generator=g).requires_grad_()
    kw = dict(ref_logp=p["ref_logp"], entropy=entropy, **opts)
    loss, _ = ik.ppo_loss(logp, p["old_logp"], p["advantages"], p["mask"], backend=backend, **kw)
    grads = torch.autograd.grad(loss, [logp, entropy], allow_unused=True, materialize_grads=True)
    l64, e64 = logp.detach().double().requires_grad_(), entropy.detach().double().requires_grad_()
    old = None if p["old_logp"] is None else p["old_logp"].double()
    kw64 = {**kw, "ref_logp": p["ref_logp"].double(), "entropy": e64}
    want, _ = ref.ppo_loss(l64, old, p["advantages"].double(), p["mask"], **kw64)
    want_grads = torch.autograd.grad(want, [l64, e64], allow_unused=True, materialize_grads=True)
    assert abs(loss.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item())), name
    for g_, w_ in zip(grads, want_grads):
        assert (g_.double() - w_).abs().max() <= 1e-5 * max(1.0, w_.abs().max().item()), name


def test_presets_are_trl_formulas():
    # TRL 1.16's _compute_loss, written out: per-token loss L, mask m, B sequences, T columns.
    g = torch.Generator().manual_seed(4)
    B, T = 5, 6
    logp = -torch.rand(B, T, generator=g) * 2
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = False  # an empty sequence: TRL still divides by B
    r = torch.exp(logp - old)
    L = -torch.minimum(r * adv[:, None], r.clamp(0.8, 1.2) * adv[:, None])
    m = mask.float()
    trl = {
        "grpo": ((L * m).sum(-1) / m.sum(-1).clamp(min=1)).mean(),
        "bnpo": (L * m).sum() / m.sum().clamp(min=1),
        "dr_grpo": (L * m).sum() / (B * 16),
        "dapo": (L * m).sum() / 40.0,
        "luspo": (L * m).sum(-1).mean(),
    }
    extra = {"dr_grpo": dict(norm_length=16), "dapo": dict(num_tokens=40.0)}
    for name, want in trl.items():
        for backend in ("torch", "cpu"):
            got, _ = ik.ppo_loss(logp, old, adv, mask, aggregation=name, backend=backend, **extra.get(name, {}))
            assert abs(got.item() - want.item()) < 1e-6, (name, backend, got.item(), want.item())


class _CountGemms(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.gemms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.gemms += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_on_policy_keeps_one_pass(backend):
    # old_logp=None: the ratio comes from the same row pass (three GEMMs per chunk, as with old
    # log-probs given), not from an extra no-grad pass over the logits (four per chunk).
    p = make_problem()
    counts = {}
    for label, old in (("given", p["old_logp"]), ("on-policy", None)):
        h = p["hidden"].clone().requires_grad_()
        w = p["weight"].clone().requires_grad_()
        with _CountGemms() as mode:
            loss, _ = ik.linear_ppo_loss(h, w, p["targets"], old, p["advantages"], p["mask"], chunk_size=6,
                                         backend=backend)
        counts[label] = mode.gemms
    assert counts["on-policy"] == counts["given"]
    detached = ik.linear_logprobs(p["hidden"], p["weight"], torch.where(p["mask"], p["targets"], -100))
    a, _ = ik.linear_ppo_loss(p["hidden"], p["weight"], p["targets"], None, p["advantages"], p["mask"],
                              backend=backend)
    b, _ = ik.linear_ppo_loss(p["hidden"], p["weight"], p["targets"], detached, p["advantages"], p["mask"],
                              backend=backend)
    assert abs(a.item() - b.item()) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale, cap", [(0.0625, None), (None, 5.0), (1.7, 3.0)], ids=["scale", "softcap", "both"])
def test_logit_scale_and_softcap(backend, scale, cap):
    # Gemma soft-caps its logits and Cohere scales them: without the transform the log-probs are wrong.
    p = make_problem()
    h64, w64, b64 = p["hidden"].double(), p["weight"].double() * 4, p["bias"].double()
    t = torch.where(p["mask"], p["targets"], -100)
    hh = p["hidden"].clone().requires_grad_()
    ww = (p["weight"] * 4).clone().requires_grad_()
    logp, ent = ik.linear_logprobs(hh, ww, t, bias=p["bias"], temperature=0.7, return_entropy=True,
                                   logit_scale=scale, softcap=cap, backend=backend, chunk_size=6)
    (logp.sum() + ent.sum()).backward()
    h_ref, w_ref = h64.clone().requires_grad_(), w64.clone().requires_grad_()
    lp_ref, ent_ref = ref.linear_logprobs(h_ref, w_ref, t, bias=b64, temperature=0.7, return_entropy=True,
                                          logit_scale=scale, softcap=cap)
    (lp_ref.sum() + ent_ref.sum()).backward()
    assert (logp.double() - lp_ref).abs().max() < 2e-5
    assert (ent.double() - ent_ref).abs().max() < 2e-5
    assert (hh.grad.double() - h_ref.grad).abs().max() < 1e-4 * max(1.0, h_ref.grad.abs().max().item())
    assert (ww.grad.double() - w_ref.grad).abs().max() < 1e-4 * max(1.0, w_ref.grad.abs().max().item())
    plain = ik.linear_logprobs(p["hidden"], p["weight"] * 4, t, bias=p["bias"], temperature=0.7, backend=backend)
    assert (plain.double() - lp_ref).abs().max() > 1e-2  # the transform matters
    p2, opts = make_problem(), dict(logit_scale=scale, softcap=cap, entropy_coef=0.01)
    want = run(reference, p2, **opts)
    got = run(fused, p2, backend=backend, **opts)
    for i in range(4):
        assert (got[i].double() - want[i]).abs().max() <= 2e-5 * max(1.0, want[i].abs().max().item())


@pytest.mark.parametrize("bad, match", [
    (dict(logit_scale=0.0), "logit_scale must be a finite nonzero number"),
    (dict(logit_scale=float("inf")), "logit_scale must be a finite nonzero number"),
    (dict(softcap=-1.0), "softcap must be a finite number > 0"),
    (dict(softcap=True), "softcap must be a finite number > 0"),
])
def test_bad_logit_transform(bad, match):
    with pytest.raises(ValueError, match=match):
        ik.linear_logprobs(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long), **bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_hidden_with_an_fp32_head(backend):
    # TRL's cast_lm_head_to_fp32: the GEMMs run in fp32 on the bf16 hidden states, exactly upcast.
    p = make_problem()
    h16 = p["hidden"].to(torch.bfloat16)
    t = torch.where(p["mask"], p["targets"], -100)
    hh = h16.clone().requires_grad_()
    logp = ik.linear_logprobs(hh, p["weight"], t, bias=p["bias"], temperature=0.7, backend=backend)
    logp.sum().backward()
    h_ref = h16.double().requires_grad_()
    want = ref.linear_logprobs(h_ref, p["weight"].double(), t, bias=p["bias"].double(), temperature=0.7)
    want.sum().backward()
    assert logp.dtype == torch.float32 and hh.grad.dtype == torch.bfloat16
    assert (logp.double() - want).abs().max() < 2e-5
    assert (hh.grad.double() - h_ref.grad).abs().max() < 2e-2 * max(1.0, h_ref.grad.abs().max().item())
    with pytest.raises(ValueError, match="bf16/fp16 hidden states with an fp32 weight"):
        ik.linear_logprobs(p["hidden"], p["weight"].to(torch.bfloat16), t)

"""ppo_loss against its float64 reference, for every option and backend, plus TRL's GRPO loss.

The batches have sequences of very different lengths, a fully masked sequence, NaN in the padding,
both advantage signs and log ratios spread wide enough that every clip (low, high, dual) fires.
"""

import collections
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not backends.triton_installed(), reason="triton is not installed"))
BACKENDS = ["torch", "cpu", TRITON]

OPTIONS = {
    "default": {},
    "clip-higher": dict(clip_high=0.28),
    "dual-clip": dict(clip_low=0.1, clip_high=0.3, dual_clip=1.5),
    "kl-k1": dict(kl_coef=0.1, kl_estimator="k1"),
    "kl-k2": dict(kl_coef=0.1, kl_estimator="k2"),
    "kl-k3": dict(kl_coef=0.1, kl_estimator="k3"),
    "entropy": dict(entropy_coef=0.05),
    "seq-mean-token-sum": dict(aggregation="seq-mean-token-sum"),
    "seq-mean-token-mean": dict(aggregation="seq-mean-token-mean"),
    "dr-grpo": dict(aggregation="seq-mean-token-sum-norm"),
    "dr-grpo-norm32": dict(aggregation="seq-mean-token-sum-norm", norm_length=32),
    "gspo": dict(importance="sequence", clip_low=3e-4, clip_high=4e-4, aggregation="seq-mean-token-mean"),
    "gspo-everything": dict(importance="sequence", aggregation="seq-mean-token-sum", dual_clip=1.2, kl_coef=0.05,
                            entropy_coef=0.02, clip_high=0.3),
    "everything": dict(clip_low=0.15, clip_high=0.25, dual_clip=2.0, kl_coef=0.2, kl_estimator="k3",
                       entropy_coef=0.01, aggregation="seq-mean-token-mean"),
}
LENGTHS = [13, 1, 7, 0, 12, 4]  # very different lengths, one fully masked sequence


def make_batch(per_token_adv=False, lengths=LENGTHS, T=13, dtype=torch.float64, seed=0):
    """Right-padded batch; padding holds NaN so that any leak shows."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    # Per-sequence offsets make the GSPO sequence ratios leave [1 - eps, 1 + eps] both ways.
    shift = 0.4 * torch.randn(B, 1, generator=g, dtype=torch.float64)
    old = logp + shift + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref_logp = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if per_token_adv else \
        torch.randn(B, generator=g, dtype=torch.float64)
    for x in (logp, old, ref_logp, entropy) + ((adv,) if per_token_adv else ()):
        x.masked_fill_(~mask, float("nan"))
    cast = lambda x: x.to(dtype)  # noqa: E731
    return dict(logp=cast(logp), old_logp=cast(old), advantages=cast(adv), mask=mask, ref_logp=cast(ref_logp),
                entropy=cast(entropy))


def loss_grads_metrics(fn, batch, **options):
    logp = batch["logp"].detach().clone().requires_grad_()
    entropy = batch["entropy"].detach().clone().requires_grad_()
    loss, metrics = fn(logp, batch["old_logp"], batch["advantages"], batch["mask"], ref_logp=batch["ref_logp"],
                       entropy=entropy, **options)
    g_logp, g_entropy = torch.autograd.grad(loss, [logp, entropy], allow_unused=True, materialize_grads=True)
    return loss.detach(), g_logp, g_entropy, metrics


def assert_close_to_reference(batch, backend, options, atol):
    ref_batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    want = loss_grads_metrics(ref.ppo_loss, ref_batch, **options)
    got = loss_grads_metrics(ik.ppo_loss, batch, backend=backend, **options)
    mask = batch["mask"]
    torch.testing.assert_close(got[0].double(), want[0], atol=atol, rtol=atol)
    # Off-mask gradients are exactly zero; on-mask ones match the reference.
    for g, w in zip(got[1:3], want[1:3]):
        assert torch.all(g[~mask] == 0)
        torch.testing.assert_close(g.double()[mask], w[mask], atol=atol, rtol=atol)
    assert set(got[3]) == set(want[3])
    for key in want[3]:
        torch.testing.assert_close(got[3][key].double(), want[3][key], atol=atol, rtol=atol, msg=key)


@pytest.mark.parametrize("per_token_adv", [False, True], ids=["adv-per-seq", "adv-per-token"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_reference(backend, name, per_token_adv):
    batch = make_batch(per_token_adv, dtype=torch.float32)
    assert_close_to_reference(batch, backend, OPTIONS[name], atol=2e-5)


@pytest.mark.parametrize("name", ["default", "dual-clip", "gspo-everything", "everything"])
def test_float64_torch_backend_is_exact(name):
    assert_close_to_reference(make_batch(True), "torch", OPTIONS[name], atol=1e-12)


def test_every_clip_fires_in_the_test_batch():
    """Guards the other tests: they would not exercise the clipped branches otherwise."""
    b = make_batch()
    _, m = ref.ppo_loss(b["logp"], b["old_logp"], b["advantages"], b["mask"], clip_low=0.1, clip_high=0.3,
                        dual_clip=1.5)
    assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0 and m["clip_frac_dual"] > 0
    _, m = ref.ppo_loss(b["logp"], b["old_logp"], b["advantages"], b["mask"], **OPTIONS["gspo"])
    assert 0 < m["clip_frac_low"] + m["clip_frac_high"] < 1


@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradcheck_float64(name):
    b = make_batch(per_token_adv=True, lengths=[5, 2, 0, 4], T=5)

    def fn(logp, entropy):
        return ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"], ref_logp=b["ref_logp"], entropy=entropy,
                           backend="torch", **OPTIONS[name])[0]

    inputs = (b["logp"].nan_to_num(-1.0).requires_grad_(), b["entropy"].nan_to_num(1.0).requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gspo_token_gradient_is_sequence_ratio_over_length():
    """GSPO, unclipped, per-sequence advantage: dloss/dlogp_t = -A * s / |y| times the aggregation weight."""
    b = make_batch(lengths=[6, 3, 1], T=6)
    logp = b["logp"].requires_grad_()
    loss, _ = ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"], importance="sequence",
                          clip_low=0.99, clip_high=100.0, aggregation="seq-mean-token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    n = b["mask"].sum(1, keepdim=True).double()
    log_s = torch.where(b["mask"], b["logp"].detach() - b["old_logp"], 0.0).sum(1, keepdim=True) / n
    # seq-mean-token-mean weighs each sequence's mean loss by 1/3; the sequence loss -A s does not
    # depend on t, so d/dlogp_t = (1/3) * (-A) * s / n.
    want = (-b["advantages"][:, None] * torch.exp(log_s) / n / 3).expand_as(grad)
    torch.testing.assert_close(grad[b["mask"]], want[b["mask"]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                         "seq-mean-token-sum-norm"])
def test_fully_masked_sequences_change_nothing(backend, aggregation):
    """Adding fully masked sequences (NaN inside, NaN advantage) leaves loss, gradients and metrics unchanged."""
    b = make_batch(lengths=[9, 3, 6], T=9, dtype=torch.float32)
    padded = make_batch(lengths=[9, 0, 3, 6, 0], T=9, dtype=torch.float32)
    for k in ("logp", "old_logp", "ref_logp", "entropy", "advantages"):
        padded[k][[0, 2, 3]] = b[k]
    padded["advantages"][1] = float("nan")
    opts = dict(aggregation=aggregation, kl_coef=0.1, entropy_coef=0.01, dual_clip=1.5)
    base = loss_grads_metrics(ik.ppo_loss, b, backend=backend, **opts)
    more = loss_grads_metrics(ik.ppo_loss, padded, backend=backend, **opts)
    torch.testing.assert_close(more[0], base[0])
    for g, g0 in zip(more[1:3], base[1:3]):
        torch.testing.assert_close(g[[0, 2, 3]], g0)
        assert torch.all(g[[1, 4]] == 0)
    for key in base[3]:
        torch.testing.assert_close(more[3][key], base[3][key], msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_batch_is_zero_not_nan(backend):
    b = make_batch(lengths=[0, 0], T=4, dtype=torch.float32)
    loss, g_logp, g_entropy, metrics = loss_grads_metrics(ik.ppo_loss, b, backend=backend, kl_coef=0.1,
                                                          importance="sequence", aggregation="seq-mean-token-mean")
    assert loss.item() == 0.0 and torch.all(g_logp == 0) and torch.all(g_entropy == 0)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert metrics["ratio_min"] == 1 and metrics["ratio_max"] == 1


def test_aggregations_by_their_definitions():
    """Each aggregation recomputed from single-sequence calls (whose token-mean is the plain mean)."""
    b = make_batch(lengths=[8, 2, 5], T=8)
    per_seq, counts = [], []
    for i in range(3):
        n = int(b["mask"][i].sum())
        loss, _ = ik.ppo_loss(b["logp"][i:i + 1, :n], b["old_logp"][i:i + 1, :n], b["advantages"][i:i + 1])
        per_seq.append(loss)
        counts.append(n)
    per_seq, counts = torch.stack(per_seq), torch.tensor(counts, dtype=torch.float64)

    def agg(aggregation, **kw):
        return ik.ppo_loss(b["logp"], b["old_logp"], b["advantages"], b["mask"], aggregation=aggregation, **kw)[0]

    torch.testing.assert_close(agg("token-mean"), (per_seq * counts).sum() / counts.sum())
    torch.testing.assert_close(agg("seq-mean-token-mean"), per_seq.mean())
    torch.testing.assert_close(agg("seq-mean-token-sum"), (per_seq * counts).mean())
    torch.testing.assert_close(agg("seq-mean-token-sum-norm"), (per_seq * counts).mean() / 8)
    torch.testing.assert_close(agg("seq-mean-token-sum-norm", norm_length=100), (per_seq * counts).mean() / 100)


def test_backward_scales_the_stored_gradient():
    b = make_batch(dtype=torch.float32)
    logp = b["logp"].clone().requires_grad_()
    loss, _ = ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"])
    (g1,) = torch.autograd.grad(loss, logp, retain_graph=True)
    (g3,) = torch.autograd.grad(loss * 3, logp)
    torch.testing.assert_close(g3, 3 * g1)


def test_bf16_inputs_compute_in_fp32():
    b = make_batch(dtype=torch.bfloat16)
    logp = b["logp"].clone().requires_grad_()
    loss, metrics = ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"])
    assert loss.dtype == torch.float32 and metrics["ratio_mean"].dtype == torch.float32
    (g,) = torch.autograd.grad(loss, logp)
    assert g.dtype == torch.bfloat16
    want = ref.ppo_loss(*(b[k].double() for k in ("logp", "old_logp", "advantages")), b["mask"])[0]
    torch.testing.assert_close(loss.double(), want, atol=1e-6, rtol=1e-6)


class _CountSyncs(TorchDispatchMode):
    """Counts the ops that make the host wait for a tensor's value."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero"}

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.syncs.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_no_host_sync(backend, importance):
    b = make_batch(dtype=torch.float32)
    logp = b["logp"].clone().requires_grad_()
    with _CountSyncs() as mode:
        loss, metrics = ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"], ref_logp=b["ref_logp"],
                                    entropy=b["entropy"], kl_coef=0.1, entropy_coef=0.1, dual_clip=2.0,
                                    importance=importance, check_finite=False, backend=backend)
        loss.backward()
    assert mode.syncs == []
    with _CountSyncs() as mode:  # the documented one: the advantages' finiteness check
        ik.ppo_loss(logp, b["old_logp"], b["advantages"], b["mask"], backend=backend)
    assert len(mode.syncs) == 1


def _bad(match, **changes):
    return pytest.param(changes, match, id=match[:40])


BAD_INPUTS = [
    _bad(r"old_logp must have shape \(6, 13\)", old_logp=torch.zeros(6, 12)),
    _bad(r"advantages must have shape \(6,\)", advantages=torch.zeros(5)),
    _bad(r"advantages must have shape .* or \(6, 13\)", advantages=torch.zeros(6, 13, 1)),
    _bad(r"mask must have shape \(6, 13\)", mask=torch.ones(6, 14, dtype=torch.bool)),
    _bad(r"ref_logp must have shape", ref_logp=torch.zeros(13, 6)),
    _bad(r"entropy must have shape", entropy=torch.zeros(6)),
    _bad(r"logp must have shape \[B, T\]", logp=torch.zeros(6 * 13)),
    _bad(r"advantages must be a floating-point", advantages=torch.zeros(6, dtype=torch.int64)),
    _bad(r"clip_low must be finite and > 0", clip_low=0.0),
    _bad(r"clip_low must be finite and > 0", clip_low=-0.2),
    _bad(r"clip_high must be finite and > 0", clip_high=0.0),
    _bad(r"clip_high must be finite and > 0", clip_high=float("nan")),
    _bad(r"dual_clip must be > 1", dual_clip=1.0),
    _bad(r"dual_clip must be finite and > 0", dual_clip=-3.0),
    _bad(r"aggregation must be one of .*seq-mean-token-sum-norm", aggregation="sum"),
    _bad(r"kl_estimator must be one of k1, k2, k3", kl_estimator="k4", kl_coef=0.1),
    _bad(r"importance must be one of token, sequence", importance="seq"),
    _bad(r"kl_coef=0.1 needs ref_logp", kl_coef=0.1, ref_logp=None),
    _bad(r"kl_coef must be >= 0", kl_coef=-1.0),
    _bad(r"entropy_coef=0.1 needs entropy", entropy_coef=0.1, entropy=None),
    _bad(r"norm_length must be an int >= 1", norm_length=0, aggregation="seq-mean-token-sum-norm"),
    _bad(r"norm_length replaces a sequence's token count, and aggregation='seq-mean-token-sum' divides by none",
         norm_length=8, aggregation="seq-mean-token-sum"),
    _bad(r"norm_length and num_tokens both set the token-mean's denominator", norm_length=8, num_tokens=40),
    _bad(r"num_tokens is the denominator of a token mean; aggregation='grpo' divides by sequences",
         aggregation="grpo", num_tokens=40),
    _bad(r"num_sequences is the denominator of a sequence mean; aggregation='dapo' divides by tokens",
         aggregation="dapo", num_sequences=4),
    _bad(r"num_tokens must be finite and > 0", num_tokens=0),
    _bad(r"num_sequences must be a positive number or a one-element tensor", aggregation="luspo",
         num_sequences=torch.ones(2)),
    _bad(r"kl_times_ratio must be a bool", kl_times_ratio=1),
    _bad(r"importance_weights must have shape \(6, 13\)", importance_weights=torch.ones(6, 12)),
    _bad(r"importance_weights weight each token's loss at importance='token'", importance="sequence",
         importance_weights=torch.ones(6, 13)),
    _bad(r"advantages must have shape \(6,\) or \(6, 1\)", advantages=torch.ones(6, 2)),
    _bad(r"advantages must be finite on valid tokens: found NaN or inf at index \(2,\)",
         advantages=torch.tensor([0.0, 1.0, float("nan"), 0.0, 1.0, 2.0])),
    _bad(r"advantages must be finite on valid tokens: found NaN or inf at index \(0, 5\)",
         advantages=torch.zeros(6, 13).index_put_((torch.tensor(0), torch.tensor(5)), torch.tensor(float("inf")))),
    _bad(r"backend='nope' is not a backend", backend="nope"),
]


@pytest.mark.parametrize("changes,match", BAD_INPUTS)
def test_bad_input_raises(changes, match):
    b = make_batch(dtype=torch.float32)
    kwargs = dict(ref_logp=b["ref_logp"], entropy=b["entropy"])
    args = dict(logp=b["logp"], old_logp=b["old_logp"], advantages=b["advantages"], mask=b["mask"])
    for k, v in changes.items():
        (args if k in args else kwargs)[k] = v
    with pytest.raises(ValueError, match=match):
        ik.ppo_loss(args["logp"], args["old_logp"], args["advantages"], args["mask"], **kwargs)


def test_nan_advantage_check_can_be_skipped():
    b = make_batch(dtype=torch.float32)
    adv = b["advantages"].clone()
    adv[0] = float("nan")
    loss, _ = ik.ppo_loss(b["logp"], b["old_logp"], adv, b["mask"], check_finite=False)
    assert torch.isnan(loss)  # garbage in, garbage out: nothing hides it


# --------------------------------------------------------------------------------------------------
# TRL's GRPO loss (trl.trainer.grpo_trainer.GRPOTrainer._compute_loss), called on a stand-in trainer
# whose model call returns our log-probs and entropies: the exact lines TRL trains with.
#
# Where TRL differs from ia_kernels' definitions (docs/design.md / reference/ppo.py), the batch avoids it:
# - TRL's seq-mean losses ("grpo", "dr_grpo") divide by the batch size B, counting fully masked
#   sequences; ia_kernels counts only sequences with a valid token. The batches have none empty.
# - TRL's entropy bonus is always a token mean, whatever the loss type; ia_kernels aggregates it
#   like the rest of the loss. Compared only under "bnpo" (token-mean), where the two agree.
# - TRL does not clamp log ratios (ia_kernels clamps at +-20): irrelevant at these values.
# - TRL's "delta" (INTELLECT-2 two-sided clipping) caps the ratio at delta in the unclipped
#   branch; for delta > 1 + clip_high that is exactly dual_clip = delta.
# - TRL's clip-fraction metrics under sequence importance average over sequences, ours over tokens;
#   compared only at token level.

TRL_CASES = {
    "grpo": ("grpo", {}, dict(aggregation="seq-mean-token-mean")),
    "bnpo+entropy": ("bnpo", dict(entropy_coef=0.05), dict(aggregation="token-mean", entropy_coef=0.05)),
    "dapo-clip-higher": ("dapo", dict(eps_high=0.28), dict(aggregation="token-mean", clip_high=0.28)),
    "dr_grpo": ("dr_grpo", dict(max_len=16), dict(aggregation="seq-mean-token-sum-norm", norm_length=16)),
    "grpo-kl": ("grpo", dict(beta=0.04), dict(aggregation="seq-mean-token-mean", kl_coef=0.04, kl_estimator="k3")),
    "grpo-delta": ("grpo", dict(delta=1.5), dict(aggregation="seq-mean-token-mean", dual_clip=1.5)),
    "gspo": ("grpo", dict(level="sequence", eps_low=3e-4, eps_high=4e-4),
             dict(aggregation="seq-mean-token-mean", importance="sequence", clip_low=3e-4, clip_high=4e-4)),
}


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def trl_grpo_loss(logp, entropy, old_logp, advantages, mask, ref_logp, *, loss_type, beta=0.0, eps_low=0.2,
                  eps_high=0.2, level="token", delta=None, entropy_coef=0.0, max_len=None):
    from trl.trainer.grpo_trainer import GRPOTrainer

    trainer = types.SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=types.SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=1),
        loss_type=loss_type,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len,
        _entropy_bonus_enabled=entropy_coef != 0, entropy_coef=entropy_coef, use_adaptive_entropy=False,
        aux_loss_enabled=False, accelerator=_Accelerator(), _metrics={"train": collections.defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropy, None))
    B, T = mask.shape
    inputs = dict(prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                  completion_ids=torch.zeros(B, T, dtype=torch.long), completion_mask=mask.long(),
                  advantages=advantages, old_per_token_logps=old_logp, ref_per_token_logps=ref_logp,
                  num_items_in_batch=mask.sum())
    try:
        loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    except AttributeError as exc:  # a TRL release that reads more trainer state than this stand-in has
        import trl

        pytest.skip(f"trl {trl.__version__}'s GRPOTrainer._compute_loss needs trainer state the test lacks: {exc}")
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("case", list(TRL_CASES))
def test_matches_trl_grpo_loss(case):
    pytest.importorskip("trl")
    loss_type, trl_kw, our_kw = TRL_CASES[case]
    b = make_batch(lengths=[16, 3, 9, 12, 1], T=16)
    mask = b["mask"]
    # TRL multiplies by the mask instead of selecting: padding must be finite for it.
    clean = {k: v.nan_to_num(0.0) if v.is_floating_point() else v for k, v in b.items()}
    logp_t = clean["logp"].clone().requires_grad_()
    ent_t = clean["entropy"].clone().requires_grad_()
    loss_t, m_t = trl_grpo_loss(logp_t, ent_t, clean["old_logp"], clean["advantages"], mask, clean["ref_logp"],
                                loss_type=loss_type, **trl_kw)
    g_t = torch.autograd.grad(loss_t, [logp_t, ent_t], allow_unused=True, materialize_grads=True)
    loss, g_logp, g_ent, m = loss_grads_metrics(ik.ppo_loss, b, **our_kw)
    torch.testing.assert_close(loss, loss_t.detach())
    torch.testing.assert_close(g_logp[mask], g_t[0][mask])
    torch.testing.assert_close(g_ent[mask], g_t[1][mask])
    if "beta" in trl_kw:
        torch.testing.assert_close(m["kl_ref"].item(), m_t["kl"])
    torch.testing.assert_close(m["entropy_mean"].item(), m_t["entropy"])
    if "level" not in trl_kw:  # token level: same per-token clip fractions
        torch.testing.assert_close(m["clip_frac_low"].item(), m_t["clip_ratio/low_mean"], atol=1e-6, rtol=0)
        torch.testing.assert_close(m["clip_frac_high"].item(), m_t["clip_ratio/high_mean"], atol=1e-6, rtol=0)

"""Property-based fuzzing of the public API (Hypothesis): shapes, dtypes, strides (non-contiguous
views), group labels and settings drawn at random, valid and invalid, usual and extreme.

Every property asserts the same contract: a call either raises a ValueError / TypeError whose
message names one of the call's arguments (and only where the inputs are invalid by the documented
rules, which each property states as its own oracle), or returns finite values equal, to the output
dtype's tolerance, to the float64 reference in ia_kernels/reference/, on every backend that can run
here (torch, cpu, and triton under TRITON_INTERPRET=1 at tiny shapes).

What this pass found and fixed (each with its own regression test in tests/test_reliability_inputs.py):
- clip_low / clip_high = 1e300: RuntimeError from torch.clamp on the torch backend, undefined
  behaviour (a double beyond float) in the native kernels; now capped exactly past the ratio's range.
- temperature = 1e300: NaN on triton, exact elsewhere; num_tokens = 1e300: a zero loss, silently;
  kl_coef = 1e39: an inf loss. Settings a float32 kernel reads are now kept in float32's range.
- nan_policy="omit": an inf (or out-of-domain) reward in a group omit leaves out passed silently.
- logp at large |logits / T| lost its precision to lse's rounding (x_t - lse); now (x_t - m) - log s.
- importance_weights < 0 on a valid token reversed its update silently (found by review while
  writing the oracle): now refused like a bad normaliser.
Known limitation, allowed for here (docs/design.md, Numerics): backward's softmax probabilities
carry a relative error of about ulp(max |logits / T|).

IA_FUZZ_EXAMPLES=N runs a longer randomised search (the default is a fixed, derandomised one).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import ia_kernels as ik
from ia_kernels import backends
from ia_kernels import reference as ref

_EXAMPLES = int(os.environ.get("IA_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 100, deadline=None, derandomize=not _EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
TRITON = ["triton"] if backends.triton_installed() else []
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def names_an_argument(exc: Exception, names) -> bool:
    text = str(exc)
    return any(re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", text) for n in names)


def expect_error(call, names):
    """The call raises a ValueError / TypeError that names one of `names`; returns the exception."""
    try:
        call()
    except (ValueError, TypeError) as exc:
        assert names_an_argument(exc, names), f"error names no argument of {names}: {exc}"
        return exc
    raise AssertionError("the call accepted inputs the documented rules refuse")


def strided(x: torch.Tensor, data, label="layout") -> torch.Tensor:
    """x itself, or the same values as a non-contiguous view (every other element of a larger buffer,
    or the transpose of a transposed copy)."""
    kind = data.draw(st.sampled_from(["contiguous", "step", "transposed"]), label=label)
    if kind == "step" and x.dim() >= 1:
        buf = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        view = buf[..., ::2]
        view.copy_(x)
        return view
    if kind == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def assert_close(got, want, *, rtol, atol, what):
    """got (any dtype) equals the float64 reference to tolerance, both finite, except where the
    reference itself overflows got's dtype (a gradient beyond fp16's 65504, or a float32 bias's
    gradient at temperature 1e-300 in a float64 call): there both are inf."""
    if got.dtype in (torch.float32, torch.float16, torch.bfloat16):
        rounded = want.detach().to(got.dtype).double()
        over = torch.isinf(rounded) & torch.isfinite(want.detach().double())
        assert bool((got.detach().double()[over] == rounded[over]).all()), f"{what}: {got} vs {want}"
        got, want = got[~over], want[~over]
    got, want = got.detach().double(), want.detach().double()
    assert bool(torch.isfinite(got).all()), f"{what}: non-finite result {got}"
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= atol * scale + rtol * scale, f"{what}: error {err:.3g} at scale {scale:.3g}\n{got}\n{want}"


# ---- groups ----------------------------------------------------------------------------------------

@st.composite
def grouping(draw, equal_sizes=False, min_size=1):
    """(sizes per group, ids per sample as ints, a `groups` argument in one of its accepted forms)."""
    n_groups = draw(st.integers(1, 3))
    if equal_sizes:
        size = draw(st.integers(min_size, 5))
        sizes = [size] * n_groups
    else:
        sizes = draw(st.lists(st.integers(min_size, 5), min_size=n_groups, max_size=n_groups))
    ids = [g for g, s in enumerate(sizes) for _ in range(s)]
    contiguous = draw(st.booleans())
    if not contiguous:
        perm = draw(st.permutations(range(len(ids))))
        ids = [ids[i] for i in perm]
    values = draw(st.lists(st.integers(-200, 200), min_size=n_groups, max_size=n_groups, unique=True))
    form = draw(st.sampled_from(["int", "int64", "int8", "uint8", "int32", "list", "strings", "tensors",
                                 "numpy", "tuple", "mixed"]))
    labelled = [values[g] for g in ids]
    if form == "int" and contiguous and len(set(sizes)) == 1:
        arg = sizes[0]
    elif form in ("int8", "uint8"):
        lo, hi = (-128, 127) if form == "int8" else (0, 255)
        small = [v % (hi - lo + 1) + lo for v in values]
        assume(len(set(small)) == n_groups)
        arg = torch.tensor([small[g] for g in ids], dtype=getattr(torch, form))
    elif form == "int32":
        arg = torch.tensor(labelled, dtype=torch.int32)
    elif form == "list":
        arg = labelled
    elif form == "strings":
        arg = [f"uid-{v}" for v in labelled]
    elif form == "tensors":
        arg = list(torch.tensor(labelled))
    elif form == "numpy":
        arg = np.array(labelled)
    elif form == "tuple":
        arg = tuple(np.int64(v) for v in labelled)
    elif form == "mixed":  # equal numbers of different types: one label
        kinds = [int, float, np.int32, np.float64, torch.tensor, lambda v: (v,)]
        picks = draw(st.lists(st.integers(0, len(kinds) - 2), min_size=len(ids), max_size=len(ids)))
        arg = [kinds[p](v) for p, v in zip(picks, labelled)]
    else:
        arg = torch.tensor(labelled, dtype=torch.int64)
    # The reference numbers groups by ascending id; a group's identity is what matters, so give it
    # ids that sort as the op's canonical order for this form sorts them (any consistent map works:
    # outputs are per sample).
    return sizes, torch.tensor(ids, dtype=torch.int64), arg


# ---- group_advantages ------------------------------------------------------------------------------

ADV_ARGS = ("rewards", "groups", "estimator", "k", "answers", "eps", "variant", "nan_policy", "backend")


@st.composite
def advantage_case(draw):
    estimator = draw(st.sampled_from(ik.ESTIMATORS))
    sizes, ids, groups = draw(grouping(equal_sizes=estimator == "majority"))
    n = len(ids)
    dtype = draw(st.sampled_from(FLOATS))
    if estimator == "passk_chen" or draw(st.booleans()):
        values = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    elif estimator == "passk":
        values = draw(st.lists(st.floats(0, 1, width=16), min_size=n, max_size=n))
    else:
        wide = draw(st.sampled_from([4.0, 4.0, 65504.0, 2.0 ** 100]))  # fp16 range, beyond it
        values = draw(st.lists(st.floats(-wide, wide, width=32), min_size=n, max_size=n))
    nan_policy = draw(st.sampled_from(["raise", "omit"]))
    if nan_policy == "omit" and draw(st.booleans()):
        holes = draw(st.sets(st.integers(0, n - 1), max_size=n))
        values = [math.nan if i in holes else v for i, v in enumerate(values)]
    k = None
    if estimator in ik.ESTIMATORS_USING_K:
        k = draw(st.one_of(st.none(), st.integers(1, 6))) if estimator == "majority" else draw(st.integers(1, 6))
    variant = draw(st.sampled_from(["s", "loo", "loo-1", "centred"]))
    eps = draw(st.sampled_from([0.0, 1e-6, 0.1]))
    answers = None
    if estimator == "majority":
        answers = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
        answers = answers.to(draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int8])))
    rewards = torch.tensor(values, dtype=torch.float64).to(dtype)
    return dict(rewards=rewards, groups=groups, ids=ids, sizes=sizes, estimator=estimator, k=k, variant=variant,
                eps=eps, answers=answers, nan_policy=nan_policy)


def _advantage_refusal(c) -> bool:
    """The documented rules' verdict: must this call be refused?"""
    est, k, sizes = c["estimator"], c["k"], c["sizes"]
    r = c["rewards"].double()
    if est in ("passk", "passk_chen") and (k > min(sizes) or (est == "passk" and c["variant"] == "loo"
                                                               and k > min(sizes) - 1)):
        return True
    if est == "majority" and k is not None and k != sizes[0]:
        return True
    finite = r[~torch.isnan(r)] if c["nan_policy"] == "omit" else r
    if not bool(torch.isfinite(finite).all()):
        return True
    if est == "passk" and bool(((finite < 0) | (finite > 1)).any()):
        return True
    if est == "passk_chen" and bool(((finite != 0) & (finite != 1)).any()):
        return True
    return False


def _advantage_reference(c) -> torch.Tensor:
    """float64 reference, nan_policy="omit" emulated from its documented definition."""
    r, ids, est, k = c["rewards"].double(), c["ids"], c["estimator"], c["k"]
    out = torch.zeros(r.numel(), dtype=torch.float64)
    keep = ~torch.isnan(r)
    for g in ids.unique().tolist():
        members = (ids == g).nonzero().flatten()
        scored = members[keep[members]]
        if est == "passk":
            need = k + 1 if c["variant"] == "loo" else k
        elif est == "passk_chen":
            need = k
        elif est == "majority":
            need = members.numel()
        else:
            need = 1
        if scored.numel() < need:
            continue
        kk = members.numel() if est == "majority" and k is None else k
        sub = ref.group_advantages(r[scored], scored.numel(), estimator=est, k=kk,
                                   answers=None if c["answers"] is None else c["answers"][scored],
                                   eps=c["eps"], variant=c["variant"])
        out[scored] = sub
    return out


@FUZZ
@given(case=advantage_case(), data=st.data(), backend=st.sampled_from(["torch", "cpu"]))
def test_group_advantages(case, data, backend):
    rewards = strided(case["rewards"], data)
    groups = case["groups"]
    if isinstance(groups, torch.Tensor):
        groups = strided(groups, data, "groups layout")
    answers = None if case["answers"] is None else strided(case["answers"], data, "answers layout")
    call = lambda: ik.group_advantages(rewards, groups, estimator=case["estimator"], k=case["k"],  # noqa: E731
                                       answers=answers, eps=case["eps"], variant=case["variant"],
                                       nan_policy=case["nan_policy"], backend=backend)
    if _advantage_refusal(case):
        expect_error(call, ADV_ARGS)
        return
    got = call()
    assert got.dtype == (torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    want = _advantage_reference(case)
    tol = 1e-12 if rewards.dtype == torch.float64 else 2e-6
    if case["estimator"] in ("grpo", "passk_chen"):  # divided by a std that may be tiny
        tol *= 1e3
    assert_close(got, want, rtol=tol, atol=tol, what=f"{case['estimator']} on {backend}")


# ---- length_penalized_rewards -----------------------------------------------------------------------

LP_ARGS = ("correct", "lengths", "groups", "alpha", "threshold", "finished", "backend")


@FUZZ
@given(data=st.data(), backend=st.sampled_from(["torch", "cpu"]))
def test_length_penalized_rewards(data, backend):
    sizes, ids, groups = data.draw(grouping(), label="grouping")
    n = len(ids)
    kind = data.draw(st.sampled_from(["bool", "int", "float", "threshold"]))
    flags = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    threshold = None
    if kind == "bool":
        correct = torch.tensor(flags)
    elif kind == "int":
        correct = torch.tensor(flags, dtype=data.draw(st.sampled_from([torch.int64, torch.uint8, torch.int8])))
    elif kind == "float":
        correct = torch.tensor(flags, dtype=data.draw(st.sampled_from(FLOATS)))
    else:
        scores = data.draw(st.lists(st.one_of(st.floats(-1, 2, width=16), st.just(math.nan)), min_size=n, max_size=n))
        correct = torch.tensor(scores, dtype=data.draw(st.sampled_from(FLOATS)))
        threshold = data.draw(st.sampled_from([0.5, 0, torch.tensor(0.25), np.float32(0.75)]))
        flags = [bool(x > float(threshold)) for x in correct.double().tolist()]
    lengths_dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.float32, torch.float64,
                                               torch.bfloat16]))
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, 200), min_size=n, max_size=n))).to(lengths_dtype)
    finished = None
    if data.draw(st.booleans()):
        done = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        finished = torch.tensor(done)
        flags = [f and d for f, d in zip(flags, done)]
    alpha = data.draw(st.sampled_from([0.0, 0.1, 1.0, 0.5]))
    correct, lengths = strided(correct, data, "correct layout"), strided(lengths, data, "lengths layout")
    got = ik.length_penalized_rewards(correct, lengths, groups, alpha=alpha, threshold=threshold, finished=finished,
                                      backend=backend)
    want = ref.length_penalized_rewards(torch.tensor(flags), lengths.double(), ids, alpha=alpha)
    tol = 1e-12 if lengths.dtype == torch.float64 else 1e-6
    assert_close(got, want, rtol=tol, atol=tol, what=f"length_penalized_rewards on {backend}")


# ---- evaluation estimators ------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_pass_at_k_and_group_pass_at_k(data):
    n = data.draw(st.lists(st.integers(0, 30), min_size=1, max_size=4))
    c = [data.draw(st.integers(0, x + 1)) for x in n]  # sometimes c > n: refused
    k = data.draw(st.integers(0, 8))
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8]))
    nc, ns = torch.tensor(c).to(dtype), torch.tensor(n).to(dtype)
    call = lambda: ik.pass_at_k(nc, ns, k)  # noqa: E731
    if k < 1 or any(x < k for x in n) or any(a > b for a, b in zip(c, n)):
        expect_error(call, ("num_correct", "num_samples", "k"))
    else:
        want = torch.tensor([ref.pass_at_k(a, b, k) for a, b in zip(c, n)], dtype=torch.float64)
        assert_close(call(), want, rtol=1e-12, atol=1e-12, what="pass_at_k")
    sizes, ids, groups = data.draw(grouping(), label="grouping")
    assume(not isinstance(groups, (list, tuple, np.ndarray)))  # group_pass_at_k takes an int or an id tensor
    flags = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    correct = strided(torch.tensor(flags).to(data.draw(st.sampled_from([torch.bool, torch.int64, torch.float32]))),
                      data)
    kk = data.draw(st.integers(1, 5))
    call = lambda: ik.group_pass_at_k(correct, groups, kk)  # noqa: E731
    if kk > min(sizes):
        expect_error(call, ("correct", "groups", "k"))
        return
    order = sorted(set(ids.tolist()), key=lambda g: _canonical_key(groups, ids, g))
    want = torch.tensor([ref.pass_at_k(sum(f for f, i in zip(flags, ids.tolist()) if i == g), sizes[g], kk)
                         for g in order], dtype=torch.float64)
    assert_close(call(), want, rtol=1e-12, atol=1e-12, what="group_pass_at_k")


def _canonical_key(groups, ids, g):
    """Where the op puts group g: blocks in order for an int, ascending id (as int64) for a tensor."""
    if isinstance(groups, int):
        return g
    return int(groups.to(torch.int64)[(ids == g).nonzero()[0, 0]])


@FUZZ
@given(data=st.data())
def test_maj_at_k(data):
    sizes, ids, groups = data.draw(grouping(), label="grouping")
    assume(not isinstance(groups, (list, tuple, np.ndarray)))
    n = len(ids)
    answers = torch.tensor(data.draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)))
    answers = answers.to(data.draw(st.sampled_from([torch.int64, torch.int8, torch.int32])))
    if data.draw(st.booleans()):
        rewards = data.draw(st.lists(st.floats(0, 1, width=16), min_size=n, max_size=n))
    else:
        rewards = [float(x) for x in data.draw(st.lists(st.booleans(), min_size=n, max_size=n))]
    correct = strided(torch.tensor(rewards, dtype=data.draw(st.sampled_from(FLOATS))), data)
    k = data.draw(st.integers(1, 5))
    call = lambda: ik.maj_at_k(strided(answers, data, "answers layout"), correct, groups, k)  # noqa: E731
    if k > min(sizes):
        expect_error(call, ("answers", "correct", "groups", "k"))
        return
    order = sorted(set(ids.tolist()), key=lambda g: _canonical_key(groups, ids, g))
    r64 = correct.double().tolist()
    want = []
    for g in order:
        members = [i for i in range(n) if int(ids[i]) == g]
        want.append(ref.maj_at_k([int(answers[i]) for i in members], [r64[i] for i in members], k))
    assert_close(call(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12, what="maj_at_k")


# ---- ppo_loss -------------------------------------------------------------------------------------

PPO_ARGS = ("logp", "old_logp", "advantages", "mask", "ref_logp", "clip_low", "clip_high", "dual_clip", "kl_coef",
            "kl_estimator", "entropy", "entropy_coef", "aggregation", "importance", "norm_length", "num_tokens",
            "num_sequences", "kl_times_ratio", "importance_weights", "check_finite", "backend")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm",
                "grpo", "bnpo", "dr_grpo", "dapo", "luspo")
BASE = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
        "dapo": "token-mean", "luspo": "seq-mean-token-sum"}


@st.composite
def ppo_options(draw):
    """Loss options, and whether the documented rules refuse the combination."""
    aggregation = draw(st.sampled_from(AGGREGATIONS))
    base = BASE.get(aggregation, aggregation)
    # Extreme values (past any ratio, beyond float32) are drawn now and then, not as often as usual ones.
    opts = dict(clip_low=draw(st.sampled_from([0.1, 0.2, 0.5, 0.2, 0.1, 0.3, 3.0, 1e300])),
                clip_high=draw(st.sampled_from([None, 0.28, 1.0, None, 0.28, None, 1e300])),
                dual_clip=draw(st.sampled_from([None, 1.5, 3.0, None, None, 1e300])),
                kl_coef=draw(st.sampled_from([0.0, 0.05, 0.5, 0.0, 0.05, 0.1, 0.0, 1e-300, 1e39])),
                kl_estimator=draw(st.sampled_from(["k1", "k2", "k3"])),
                kl_times_ratio=draw(st.booleans()),
                entropy_coef=draw(st.sampled_from([0.0, 0.01, -0.05, 0.0, 0.01, 0.0, 0.02, -1e39])),
                aggregation=aggregation,
                importance=draw(st.sampled_from(["token", "token", "sequence"])))
    # Beyond float32: refused when the call computes in float32 (the caller checks that).
    refused = False
    wide = opts["kl_coef"] > 3.4e38 or abs(opts["entropy_coef"]) > 3.4e38
    norm = draw(st.sampled_from([None, None, None, None, 1, 5]))
    if norm is not None:
        opts["norm_length"] = norm
        refused |= base == "seq-mean-token-sum"
    count = draw(st.sampled_from([None, None, None, 7, 2.5, 1e300, "tensor", "tensor"]))
    if count is not None:
        right = "num_tokens" if base == "token-mean" else "num_sequences"
        wrong = "num_sequences" if right == "num_tokens" else "num_tokens"
        name = draw(st.sampled_from([right, right, right, wrong]))
        opts[name] = torch.tensor(3.0) if count == "tensor" else count
        refused |= (name == "num_tokens") != (base == "token-mean")
        refused |= name == "num_tokens" and norm is not None
        wide |= count == 1e300
    return opts, (refused, wide)


@st.composite
def token_batch(draw, B=None, T=None):
    B = draw(st.integers(1, 3)) if B is None else B
    T = draw(st.integers(1, 4)) if T is None else T
    shape = (B, T)

    def tensor(lo, hi):
        return torch.tensor(draw(st.lists(st.floats(lo, hi, width=32), min_size=B * T, max_size=B * T)),
                            dtype=torch.float64).view(shape)

    logp = tensor(-6, 0)
    spread = draw(st.sampled_from([1.0, 30.0]))  # 30: log ratios past the +-20 clamp
    old = None if draw(st.booleans()) else (logp + tensor(-spread, spread)).clamp(max=0)
    ref_logp = (logp + tensor(-spread, spread)).clamp(max=0)
    mask_kind = draw(st.sampled_from(["none", "bool", "int", "float"]))
    mask = None
    if mask_kind != "none":
        bits = torch.tensor(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).view(shape)
        mask = bits if mask_kind == "bool" else bits.to(torch.int64 if mask_kind == "int" else torch.float32)
    adv_kind = draw(st.sampled_from(["seq", "seq1", "token"]))
    n_adv = B if adv_kind != "token" else B * T
    adv = torch.tensor(draw(st.lists(st.floats(-2, 2, width=32), min_size=n_adv, max_size=n_adv)), dtype=torch.float64)
    adv = adv.view(B, 1) if adv_kind == "seq1" else adv.view(B, T) if adv_kind == "token" else adv
    entropy = tensor(0, 3)
    iw = tensor(draw(st.sampled_from([0.0, 0.0, 0.0, -0.5])), 2) if draw(st.booleans()) else None
    if mask is not None and draw(st.booleans()):  # masked tokens may hold anything (documented)
        junk = torch.tensor(draw(st.lists(st.sampled_from([math.nan, math.inf, -math.inf, 1e30]),
                                          min_size=B * T, max_size=B * T)), dtype=torch.float64).view(shape)
        off = mask == 0
        logp, entropy, ref_logp = (torch.where(off, junk, x) for x in (logp, entropy, ref_logp))
        old = None if old is None else torch.where(off, junk, old)
        adv = torch.where(off, junk, adv) if adv.shape == shape else adv
    return dict(logp=logp, old_logp=old, advantages=adv, mask=mask, ref_logp=ref_logp, entropy=entropy,
                importance_weights=iw)


def _negative_weight_on_valid(iw, mask, shape, targets=None, ignore_index=None) -> bool:
    if iw is None:
        return False
    valid = torch.ones(shape, dtype=torch.bool) if mask is None else mask != 0
    if targets is not None:
        valid &= targets.to(torch.int64) != ignore_index
    return bool((valid & (iw < 0)).any())


def _cast(x, dtype, data, label):
    return None if x is None else strided(x.to(dtype), data, label)


TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@FUZZ
@given(data=st.data(), batch=token_batch(), options=ppo_options(),
       dtype=st.sampled_from(FLOATS + [torch.float32]), backend=st.sampled_from(["torch", "cpu"] + TRITON))
def test_ppo_loss(data, batch, options, dtype, backend):
    opts, (refused, wide) = options
    refused |= wide and dtype != torch.float64
    if opts.get("importance") == "sequence" and batch["importance_weights"] is not None:
        if data.draw(st.booleans(), label="keep weights under GSPO (refused)"):
            refused = True
        else:
            batch = {**batch, "importance_weights": None}
    refused |= dtype == torch.float64 and backend != "torch"
    logp = _cast(batch["logp"], dtype, data, "logp layout").requires_grad_()
    def dtype_of(name):  # each per-token input in logp's dtype or another float dtype
        return data.draw(st.sampled_from([dtype, dtype, torch.float32, torch.float64, torch.bfloat16]), label=name)

    entropy = _cast(batch["entropy"], dtype_of("entropy dtype"), data, "entropy layout").requires_grad_()
    args = {k: _cast(batch[k], dtype_of(k + " dtype"), data, k)
            for k in ("old_logp", "advantages", "ref_logp", "importance_weights")}
    mask = None if batch["mask"] is None else strided(batch["mask"], data, "mask layout")
    call = lambda: ik.ppo_loss(logp, args["old_logp"], args["advantages"], mask, ref_logp=args["ref_logp"],  # noqa
                               entropy=entropy, importance_weights=args["importance_weights"], backend=backend,
                               **opts)
    refused |= _negative_weight_on_valid(args["importance_weights"], mask, logp.shape)
    event(f"{backend} {'refused' if refused else 'computed'}")
    if refused:
        expect_error(call, PPO_ARGS)
        return
    loss, metrics = call()
    loss.backward()
    # Coefficients beyond float32 (accepted in float64) only amplify the reference's own rounding
    # (1e39 times a cancellation): that they run is the check; nothing to compare.
    assume(not wide)
    want_logp = logp.detach().double().requires_grad_()
    want_entropy = entropy.detach().double().requires_grad_()
    want, want_metrics = ref.ppo_loss(want_logp, None if args["old_logp"] is None else args["old_logp"].double(),
                                      args["advantages"].double(), mask, ref_logp=args["ref_logp"].double(),
                                      entropy=want_entropy, importance_weights=None if args["importance_weights"] is None
                                      else args["importance_weights"].double(), **opts)
    want.backward()
    assume(bool(torch.isfinite(want).all()) and bool(torch.isfinite(want_logp.grad).all()))  # see test_linear_ppo_loss
    tol = TOL[dtype]
    valid = torch.ones(logp.shape, dtype=torch.bool) if mask is None else mask != 0
    assert_close(loss, want, rtol=tol, atol=tol, what="loss")
    assert_close(logp.grad[valid], want_logp.grad[valid], rtol=tol, atol=tol, what="grad logp")
    assert bool((logp.grad[~valid] == 0).all()), "masked tokens get no gradient"
    if want_entropy.grad is not None:
        etol = max(tol, TOL[entropy.dtype])  # the gradient comes back in entropy's dtype
        assert_close(entropy.grad[valid], want_entropy.grad[valid], rtol=etol, atol=etol, what="grad entropy")
        assert bool((entropy.grad[~valid] == 0).all())
    for key in ("ratio_mean", "approx_kl", "entropy_mean"):
        assert_close(metrics[key], want_metrics[key], rtol=tol, atol=tol, what=key)


# ---- linear_logprobs and linear_ppo_loss ------------------------------------------------------------

LM_ARGS = ("hidden", "weight", "targets", "bias", "temperature", "ignore_index", "logit_scale", "softcap", "backend",
           "chunk_size", "tp_group")
LM_DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
             (torch.float16, torch.float16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]


@st.composite
def lm_head(draw, lead):
    """hidden [*lead, H], weight [V, H], bias [V] or None, targets [*lead] with some ignore_index."""
    H, V = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    h_dtype, w_dtype = draw(st.sampled_from(LM_DTYPES))
    n = math.prod(lead)
    scale = draw(st.sampled_from([0.5, 3.0]))
    hidden = (torch.tensor(draw(st.lists(st.floats(-1, 1, width=32), min_size=n * H, max_size=n * H)),
                           dtype=torch.float64) * scale).view(*lead, H).to(h_dtype)
    weight = torch.tensor(draw(st.lists(st.floats(-1, 1, width=32), min_size=V * H, max_size=V * H)),
                          dtype=torch.float64).view(V, H).to(w_dtype)
    bias = None
    if draw(st.booleans()):
        bias = torch.tensor(draw(st.lists(st.floats(-2, 2, width=32), min_size=V, max_size=V)),
                            dtype=torch.float64).to(w_dtype)
    ignore_index = draw(st.sampled_from([-100, -1, 0, V - 1, 10 ** 9]))
    targets = torch.tensor(draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n)), dtype=torch.int64)
    if n and draw(st.booleans()):
        drop = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        targets = torch.where(drop, ignore_index, targets)
    targets = targets.view(lead).to(draw(st.sampled_from([torch.int64, torch.int32])))
    settings_ = dict(temperature=draw(st.sampled_from([1.0, 0.7, 2.5, 1.0, 0.7, 1e-3, 1e30, 1e300, 1e-300])),
                     logit_scale=draw(st.sampled_from([None, 0.5, -1.0, None, None, 1e-300, 1e39])),
                     softcap=draw(st.sampled_from([None, 3.0, None, None, 1e-3, 1e300])),
                     chunk_size=draw(st.sampled_from([None, 1, 2, 5])),
                     ignore_index=ignore_index)
    return hidden, weight, bias, targets, settings_


def lm_settings_wide(lm) -> bool:
    """Settings a float32 compute refuses (outside float32's range; see checks.require_float32_range)."""
    def outside(v, reciprocal):
        if v is None:
            return False
        v = abs(v)
        return not (1.1754943508222875e-38 <= v <= 1 / 1.1754943508222875e-38) if reciprocal else v > 3.4028234663852886e38
    return outside(lm["temperature"], True) or outside(lm["logit_scale"], False) or outside(lm["softcap"], True)


def _max_scaled_logit(hidden, weight, bias, opts) -> float:
    """max |x| over the rows, x = transform(hidden @ weight.T + bias) / temperature, in float64."""
    z = hidden.detach().double().reshape(-1, hidden.shape[-1]) @ weight.detach().double().T
    if bias is not None:
        z = z + bias.detach().double()
    if opts["logit_scale"] is not None:
        z = z * opts["logit_scale"]
    if opts["softcap"] is not None:
        z = opts["softcap"] * torch.tanh(z / opts["softcap"])
    x = (z / opts["temperature"]).abs()
    return float(x.max()) if x.numel() else 0.0  # inf where the logits overflow (NaN rows, documented)


def assume_well_conditioned(hidden, weight, bias, opts) -> float:
    """Skips problems whose scaled logits are so large that their own rounding (ulp(max |x|))
    decides the softmax (float64 takes temperature=1e-300): there no two computations need agree.
    Returns max |x|."""
    big = _max_scaled_logit(hidden, weight, bias, opts)
    eps = torch.finfo(torch.float64 if weight.dtype == torch.float64 else torch.float32).eps
    assume(big * eps < 1e-3)
    return big


def _lm_tol(h_dtype, w_dtype):
    low = torch.bfloat16 if torch.bfloat16 in (h_dtype, w_dtype) else torch.float16 if torch.float16 in (
        h_dtype, w_dtype) else None
    return {None: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[low] if w_dtype != torch.float64 else 1e-10


@FUZZ
@given(data=st.data(), lead=st.lists(st.integers(0, 3), min_size=1, max_size=3),
       backend=st.sampled_from(["torch", "cpu"] + TRITON))
def test_linear_logprobs(data, lead, backend):
    hidden, weight, bias, targets, opts = data.draw(lm_head(tuple(lead)), label="lm head")
    refused = weight.dtype == torch.float64 and backend != "torch"
    refused |= lm_settings_wide(opts) and weight.dtype != torch.float64
    event(f"{backend} {'refused' if refused else 'computed'}")
    if bias is not None:
        bias = bias.to(data.draw(st.sampled_from([bias.dtype, torch.float32, torch.float64]), label="bias dtype"))
    grads = data.draw(st.sampled_from(["all", "hidden", "weight", "none", "no_grad"]), label="grads")
    h = strided(hidden, data, "hidden layout").requires_grad_(grads in ("all", "hidden"))
    w = strided(weight, data, "weight layout").requires_grad_(grads in ("all", "weight"))
    b = None if bias is None else strided(bias, data, "bias layout").requires_grad_(grads == "all")
    call = lambda: ik.linear_logprobs(h, w, targets, bias=b, return_entropy=True, backend=backend, **opts)  # noqa
    if refused:
        expect_error(call, LM_ARGS)
        return
    big = assume_well_conditioned(hidden, weight, bias, opts)
    if grads in ("none", "no_grad"):
        with torch.set_grad_enabled(grads != "no_grad"):
            logp, entropy = call()
        assert logp.grad_fn is None and entropy.grad_fn is None
        want_logp, want_ent = ref.linear_logprobs(hidden.double(), weight.double(), targets.to(torch.int64),
                                                  bias=None if bias is None else bias.double(), return_entropy=True,
                                                  **lm_reference(opts))
        tol = _lm_tol(hidden.dtype, weight.dtype)
        assert_close(logp, want_logp, rtol=tol, atol=tol, what="logp")
        assert_close(entropy, want_ent, rtol=tol, atol=tol, what="entropy")
        return
    logp, entropy = call()
    g = torch.Generator().manual_seed(0)
    g_logp, g_ent = torch.randn(logp.shape, generator=g), torch.randn(logp.shape, generator=g)
    (logp * g_logp + entropy * g_ent).sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    want_logp, want_ent = ref.linear_logprobs(leaves[0], leaves[1], targets.to(torch.int64), bias=b64,
                                              return_entropy=True, **lm_reference(opts))
    ((want_logp * g_logp.double() + want_ent * g_ent.double()).sum()).backward()
    assume(all(x is None or bool(torch.isfinite(x).all()) for x in (want_logp, want_ent, leaves[0].grad,
                                                                   leaves[1].grad)))  # see test_linear_ppo_loss
    tol = _lm_tol(hidden.dtype, weight.dtype)
    assert_close(logp, want_logp, rtol=tol, atol=tol, what="logp")
    assert_close(entropy, want_ent, rtol=tol, atol=tol, what="entropy")
    # Known limitation (docs/design.md): backward forms p = exp(x - lse) from the stored lse, whose
    # rounding is ulp(max |x|): at |x| = logits / T beyond ~1e3 in fp32 the gradient loses that much
    # relative precision (plain PyTorch's softmax does not). The forward's logp is exact to dtype.
    tol = tol + 8 * torch.finfo(torch.float64 if weight.dtype == torch.float64 else torch.float32).eps * big
    if logp.numel():
        if h.requires_grad:
            assert_close(h.grad, leaves[0].grad, rtol=tol, atol=tol, what="grad hidden")
        if w.requires_grad:
            assert_close(w.grad, leaves[1].grad, rtol=tol, atol=tol, what="grad weight")
        if b is not None and b.requires_grad:  # the gradient comes back in the bias's dtype
            btol = max(tol, _lm_tol(b.dtype, b.dtype))
            assert_close(b.grad, b64.grad, rtol=btol, atol=btol, what="grad bias")
    assert h.grad is None or h.grad.dtype == h.dtype
    assert w.grad is None or w.grad.dtype == w.dtype


LPPO_ARGS = tuple(sorted(set(PPO_ARGS + LM_ARGS)))


@FUZZ
@given(data=st.data(), options=ppo_options(), backend=st.sampled_from(["torch", "cpu"] + TRITON))
def test_linear_ppo_loss(data, options, backend):
    opts, (refused, wide) = options
    B, T = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    hidden, weight, bias, targets, lm = data.draw(lm_head((B, T)), label="lm head")
    refused |= (wide or lm_settings_wide(lm)) and weight.dtype != torch.float64
    batch = data.draw(token_batch(B, T), label="batch")
    if opts.get("importance") == "sequence" and batch["importance_weights"] is not None:
        if data.draw(st.booleans(), label="keep weights under GSPO (refused)"):
            refused = True
        else:
            batch = {**batch, "importance_weights": None}
    refused |= weight.dtype == torch.float64 and backend != "torch"
    event(f"{backend} {'refused' if refused else 'computed'}")
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    per_token = {k: None if batch[k] is None else strided(batch[k].to(dt), data, k)
                 for k in ("old_logp", "advantages", "ref_logp", "importance_weights")}
    mask = batch["mask"]
    h = strided(hidden, data, "hidden layout").requires_grad_()
    w = strided(weight, data, "weight layout").requires_grad_()
    b = None if bias is None else bias.clone().requires_grad_()
    call = lambda: ik.linear_ppo_loss(h, w, targets, per_token["old_logp"], per_token["advantages"], mask,  # noqa
                                      bias=b, ref_logp=per_token["ref_logp"],
                                      importance_weights=per_token["importance_weights"], backend=backend, **lm,
                                      **opts)
    if refused:
        exc = expect_error(call, LPPO_ARGS)
        event(f"refused: {str(exc)[:40]}")
        return
    valid = targets.to(torch.int64) != lm["ignore_index"]
    if mask is not None:
        valid &= mask != 0
    adv = per_token["advantages"]
    if _negative_weight_on_valid(per_token["importance_weights"], mask, (B, T), targets, lm["ignore_index"]):
        expect_error(call, LPPO_ARGS)
        return
    if adv.shape == (B, T) and not bool(torch.isfinite(adv[valid]).all()):
        expect_error(call, LPPO_ARGS)  # NaN/inf advantages on tokens the mask leaves valid
        return
    big = assume_well_conditioned(hidden, weight, bias, lm)
    loss, metrics = call()
    loss.backward()
    assume(not wide)  # see test_ppo_loss
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    ref_opts = {k: v for k, v in opts.items()}
    want, want_metrics = ref.linear_ppo_loss(
        leaves[0], leaves[1], targets.to(torch.int64), None if per_token["old_logp"] is None else
        per_token["old_logp"].double(), adv.double(), mask, bias=b64, ref_logp=per_token["ref_logp"].double(),
        importance_weights=None if per_token["importance_weights"] is None else per_token["importance_weights"].double(),
        **lm_reference(lm), **ref_opts)
    want.backward()
    # float64 takes any finite setting; the reference's autograd may overflow on extreme ones
    # (softcap=1e300 times a kl_coef=1e39 gradient) where the op stays finite: nothing to compare.
    assume(all(bool(torch.isfinite(x).all()) for x in (want, leaves[0].grad, leaves[1].grad)))
    tol = _lm_tol(hidden.dtype, weight.dtype) * 4
    assert_close(loss, want, rtol=tol, atol=tol, what="loss")
    # see test_linear_logprobs: backward's known limitation
    tol = tol + 8 * torch.finfo(torch.float64 if weight.dtype == torch.float64 else torch.float32).eps * big
    assert_close(h.grad, leaves[0].grad, rtol=tol, atol=tol, what="grad hidden")
    assert_close(w.grad, leaves[1].grad, rtol=tol, atol=tol, what="grad weight")
    if b is not None:
        assert_close(b.grad, b64.grad, rtol=tol, atol=tol, what="grad bias")
    for key in ("ratio_mean", "approx_kl", "entropy_mean"):
        assert_close(metrics[key], want_metrics[key], rtol=tol, atol=tol, what=key)


def lm_reference(lm):
    return {k: v for k, v in lm.items() if k != "chunk_size"}

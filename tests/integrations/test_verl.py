"""ia_kernels.integrations.verl against the real verl (0.9.1): reached through verl's own registries
after a bare `import verl` (the `verl.plugins` entry point), compared with verl's own functions."""

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402

import ia_kernels as ik  # noqa: E402


def _batch(seed=0, groups=6, n=4, T=7, binary=False):
    g = torch.Generator().manual_seed(seed)
    B = groups * n
    scores = (torch.rand(B, generator=g) > 0.5).float() if binary else torch.rand(B, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    token_rewards = torch.zeros(B, T)
    token_rewards[torch.arange(B), lengths - 1] = scores  # verl puts the score on the last response token
    uids = np.array([f"uid-{i // n}" for i in np.random.default_rng(seed).permutation(B)], dtype=object)
    return token_rewards, mask, uids, scores, lengths


def _algo(**ia):
    return OmegaConf.create({"adv_estimator": "x", "norm_adv_by_std_in_grpo": True, "ia_kernels": ia})


def test_entry_point_registers_on_bare_import():
    for name in ("ia_passk", "ia_passk_chen", "ia_rloo_length_penalty", "ia_rloo", "ia_grpo", "ia_dr_grpo"):
        assert name in core_algos.ADV_ESTIMATOR_REGISTRY
    assert "ia_ppo" in core_algos.POLICY_LOSS_REGISTRY


@pytest.mark.parametrize("ours,theirs,norm", [("ia_grpo", "grpo", True), ("ia_grpo", "grpo", False),
                                              ("ia_rloo", "rloo", True)])
def test_estimators_equal_verl(ours, theirs, norm):
    rewards, mask, uids, _, _ = _batch()
    cfg = _algo()
    cfg.norm_adv_by_std_in_grpo = norm
    got, _ = core_algos.get_adv_estimator_fn(ours)(token_level_rewards=rewards, response_mask=mask, index=uids,
                                                    config=cfg)
    if theirs == "grpo":
        want, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, uids, norm_adv_by_std_in_grpo=norm)
    else:
        want, _ = core_algos.get_adv_estimator_fn(theirs)(token_level_rewards=rewards, response_mask=mask,
                                                          index=uids, config=cfg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_passk_with_k_equal_n_equals_verl_grpo_passk():
    rewards, mask, uids, _, _ = _batch(seed=1, binary=False)
    got, _ = core_algos.get_adv_estimator_fn("ia_passk")(token_level_rewards=rewards, response_mask=mask, index=uids,
                                                          config=_algo(k=4))
    cfg = _algo()
    cfg.norm_adv_by_std_in_grpo = False
    want, _ = core_algos.get_adv_estimator_fn("grpo_passk")(token_level_rewards=rewards, response_mask=mask,
                                                            index=uids, config=cfg)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_pkpo_chen_and_length_penalty_from_config():
    rewards, mask, uids, scores, lengths = _batch(seed=2, groups=5, n=8, binary=True)
    ids = torch.tensor([int(u.split("-")[1]) for u in uids])
    for name, settings, want in [
        ("ia_passk", dict(k=3, variant="loo"), ik.group_advantages(scores, ids, estimator="passk", k=3, variant="loo")),
        ("ia_passk_chen", dict(k=2), ik.group_advantages(scores, ids, estimator="passk_chen", k=2)),
        # a response as long as the response width (7) was cut off: it scores 0 (Arora & Zanette)
        ("ia_rloo_length_penalty", dict(alpha=0.2),
         ik.group_advantages(ik.length_penalized_rewards(scores > 0.5, lengths, ids, alpha=0.2, finished=lengths < 7),
                             ids, estimator="rloo")),
    ]:
        got, returns = core_algos.get_adv_estimator_fn(name)(token_level_rewards=rewards, response_mask=mask,
                                                              index=uids, config=_algo(**settings))
        torch.testing.assert_close(got, want[:, None] * mask, rtol=1e-6, atol=1e-7)


def test_length_penalty_scores_a_cut_off_response_zero():
    rewards, mask, uids, scores, lengths = _batch(seed=2, groups=5, n=8, binary=True)
    cut = (lengths == mask.shape[1]) & (scores > 0.5)
    assert cut.any()  # the batch holds correct responses that fill the width
    plain = ik.length_penalized_rewards(scores > 0.5, lengths, torch.tensor([int(u.split("-")[1]) for u in uids]),
                                        alpha=0.2)
    assert torch.all(plain[cut] > 0)  # without the rule they would earn a reward
    got, _ = core_algos.get_adv_estimator_fn("ia_rloo_length_penalty")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(alpha=0.2))
    ids = torch.tensor([int(u.split("-")[1]) for u in uids])
    for g in ids[cut].unique():  # in their groups, a cut-off correct response is below every finished correct one
        rows = ids == g
        finished_correct = rows & (scores > 0.5) & ~cut
        if finished_correct.any():
            assert got[rows & cut, 0].max() < got[finished_correct, 0].min()


def test_estimator_config_errors():
    rewards, mask, uids, _, _ = _batch()
    fn = core_algos.get_adv_estimator_fn("ia_passk")
    with pytest.raises(ValueError, match=r"needs algorithm.ia_kernels.k"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo())
    with pytest.raises(ValueError, match=r"needs algorithm.ia_kernels.alpha"):
        core_algos.get_adv_estimator_fn("ia_rloo_length_penalty")(token_level_rewards=rewards, response_mask=mask,
                                                                  index=uids, config=_algo())
    with pytest.raises(ValueError, match=r"unknown settings \['kk'\]"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(kk=4))


def _actor(**kw):
    return OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0,
                             "global_batch_info": kw})


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm", "token-sum"])
@pytest.mark.parametrize("global_info", [{}, {"dp_size": 2, "batch_num_tokens": 150, "global_batch_size": 40}])
@pytest.mark.parametrize("weights", [False, True])
def test_policy_loss_equals_vanilla(mode, global_info, weights):
    g = torch.Generator().manual_seed(3)
    B, T = 24, 7
    _, mask, _, _, _ = _batch(seed=3)
    mask[5] = 0  # an empty response
    old = -torch.rand(B, T, generator=g) * 3
    logp0 = old + torch.randn(B, T, generator=g) * 0.4
    adv = torch.randn(B, T, generator=g)
    w = torch.rand(B, T, generator=g) * 2 if weights else None
    info = global_info if mode != "token-sum" or not global_info else {"dp_size": 2}
    cfg = _actor(**info)
    results = []
    for name in ("vanilla", "ia_ppo"):
        logp = logp0.clone().requires_grad_(True)
        loss, metrics = core_algos.get_policy_loss_fn(name)(old, logp, adv, mask, mode, cfg, w)
        loss.backward()
        results.append((loss.detach(), logp.grad, metrics))
    (l0, g0, m0), (l1, g1, m1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-8)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert key in m1
    assert abs(m1["actor/ppo_kl"] - m0["actor/ppo_kl"]) < 1e-6


def test_logprob_backend_through_verl_patch():
    """fused_kernel_options.impl_backend=ia_kernels: verl's patched forward returns linear_logprobs' values."""
    from transformers import AutoModelForCausalLM
    from verl.models.transformers import monkey_patch

    from ia_train.models import TINY_DIR
    model = AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, dtype=torch.float32)
    ids = torch.randint(3, 99, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits / 0.7
    want = torch.log_softmax(logits, -1).gather(-1, torch.roll(ids, -1, -1)[..., None])[..., 0]
    cls_forward = type(model).forward
    try:
        # what verl's apply_monkey_patch calls with the model config's fused_kernel_options.impl_backend
        monkey_patch.patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="ia_kernels")
        assert model._verl_fused_kernels_backend == "ia_kernels"
        out = model(input_ids=ids, temperature=0.7, return_dict=True)
    finally:
        type(model).forward = cls_forward
    torch.testing.assert_close(out.log_probs, want, rtol=1e-5, atol=1e-5)
    assert out.entropy is not None and bool((out.entropy >= 0).all())

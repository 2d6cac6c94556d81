"""ia_kernels.integrations.verl against the real verl (0.9.1): reached through verl's own registries
after a bare `import verl` (the `verl.plugins` entry point), compared with verl's own functions."""

import os
import subprocess
import sys

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
    from ia_kernels.integrations import verl as plugin
    from ia_kernels.integrations.verl_check import ESTIMATOR_NAMES
    assert tuple(plugin.ESTIMATORS) == ESTIMATOR_NAMES
    for name in ESTIMATOR_NAMES:
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


@pytest.mark.parametrize("norm", [True, False])
def test_passk_with_k_equal_n_equals_verl_grpo_passk(norm):
    """norm_adv_by_std_in_grpo (verl's default True) scales ia_passk as it scales grpo_passk: switching
    estimators keeps the advantage scale."""
    rewards, mask, uids, _, _ = _batch(seed=1, binary=False)
    cfg = _algo(k=4)
    cfg.norm_adv_by_std_in_grpo = norm
    got, _ = core_algos.get_adv_estimator_fn("ia_passk")(token_level_rewards=rewards, response_mask=mask, index=uids,
                                                          config=cfg)
    cfg = _algo()
    cfg.norm_adv_by_std_in_grpo = norm
    want, _ = core_algos.get_adv_estimator_fn("grpo_passk")(token_level_rewards=rewards, response_mask=mask,
                                                            index=uids, config=cfg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.abs().max() > 0.1


def test_passk_chen_is_std_normalised_by_definition():
    rewards, mask, uids, scores, _ = _batch(seed=4, groups=5, n=8, binary=True)
    ids = torch.tensor([int(u.split("-")[1]) for u in uids])
    fn = core_algos.get_adv_estimator_fn("ia_passk_chen")
    got, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(k=2))
    want = ik.group_advantages(scores, ids, estimator="passk_chen", k=2)  # once, not divided by the std again
    torch.testing.assert_close(got, want[:, None] * mask, rtol=1e-6, atol=1e-7)
    cfg = _algo(k=2)
    cfg.norm_adv_by_std_in_grpo = False
    with pytest.raises(ValueError, match="ia_passk_chen cannot honour algorithm.norm_adv_by_std_in_grpo=False"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg)


def test_pkpo_chen_and_length_penalty_from_config():
    rewards, mask, uids, scores, lengths = _batch(seed=2, groups=5, n=8, binary=True)
    ids = torch.tensor([int(u.split("-")[1]) for u in uids])
    for name, settings, want in [
        ("ia_passk", dict(k=3, variant="loo"), ik.group_advantages(scores, ids, estimator="passk", k=3, variant="loo")),
        ("ia_passk_chen", dict(k=2, eps=0.5), ik.group_advantages(scores, ids, estimator="passk_chen", k=2, eps=0.5)),
        # a response reaching the response length limit (7) was cut off: it scores 0 (Arora & Zanette)
        ("ia_rloo_length_penalty", dict(alpha=0.2, max_response_length=7),
         ik.group_advantages(ik.length_penalized_rewards(scores > 0.5, lengths, ids, alpha=0.2, finished=lengths < 7),
                             ids, estimator="rloo")),
    ]:
        cfg = _algo(**settings)
        cfg.norm_adv_by_std_in_grpo = name == "ia_passk_chen"  # the estimators' own scale (std scaling: own tests)
        got, returns = core_algos.get_adv_estimator_fn(name)(token_level_rewards=rewards, response_mask=mask,
                                                              index=uids, config=cfg)
        torch.testing.assert_close(got, want[:, None] * mask, rtol=1e-6, atol=1e-7)


def test_length_penalty_scores_a_cut_off_response_zero():
    rewards, mask, uids, scores, lengths = _batch(seed=2, groups=5, n=8, binary=True)
    cut = (lengths == mask.shape[1]) & (scores > 0.5)
    assert cut.any()  # the batch holds correct responses that fill the width
    plain = ik.length_penalized_rewards(scores > 0.5, lengths, torch.tensor([int(u.split("-")[1]) for u in uids]),
                                        alpha=0.2)
    assert torch.all(plain[cut] > 0)  # without the rule they would earn a reward
    got, _ = core_algos.get_adv_estimator_fn("ia_rloo_length_penalty")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(alpha=0.2, max_response_length=7))
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


# ---- verl's two trainer paths: the batch that reaches the estimator ----------------------------------
# verl 0.9.1 runs the v1 trainer by default (trainer.use_v1=True): its _compute_advantage reads the
# rollout's nested (jagged) fields from TransferQueue and pads them to the batch's longest response
# (TensorDict.to_padded_tensor). The legacy trainer (use_v1=False) gets a DataProto from the agent loop
# padded to actor_rollout_ref.rollout.response_length. Both are driven here through verl's own code:
# PPOTrainer._compute_advantage (v1, with an in-memory TransferQueue) and ray_trainer.compute_advantage
# (legacy) on a batch laid out as AgentLoopWorker._postprocess lays it out, with verl's composed config.

def _verl_config(*overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose("ppo_trainer", overrides=list(overrides))
    OmegaConf.resolve(cfg)  # as both TaskRunners do
    return cfg


class _MemoryTransferQueue:
    """TransferQueue's kv_batch_get / kv_batch_put over a dict: rows in, TensorDicts (jagged) out."""

    def __init__(self):
        self.rows = {}

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict
        return list_of_dict_to_tensordict([{f: v for f, v in self.rows[k].items()
                                            if select_fields is None or f in select_fields} for k in keys])

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        from transfer_queue import KVBatchMeta
        for i, key in enumerate(keys):
            row = self.rows.setdefault(key, {})
            for name in fields.keys():
                row[name] = fields[name][i]
        return KVBatchMeta(keys=list(keys), tags=tags or [{} for _ in keys], partition_id=partition_id)


def _v1_advantages(cfg, uids, lengths, scores, monkeypatch, pad_to=None):
    """verl's v1 PPOTrainer._compute_advantage on rollout rows as AgentLoopWorkerTQ stores them; pad_to:
    first add verl's synthetic padding samples (upsample_batch_to_divisible_size) up to a multiple."""
    pytest.importorskip("transfer_queue", reason="verl's v1 trainer needs TransferQueue (verl[verl-core])")
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo import padding_utils
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1 import trainer_base

    store = _MemoryTransferQueue()
    monkeypatch.setattr(trainer_base, "tq", store)
    monkeypatch.setattr(padding_utils, "tq", store)
    keys = []
    for i, (uid, length, score) in enumerate(zip(uids, lengths, scores)):
        rm_scores = torch.zeros(length)
        rm_scores[-1] = score  # AgentLoopOutput.as_dict: the score on the last response token
        key = f"{uid}_{i}_0"
        keys.append(key)
        store.rows[key] = {"uid": uid, "prompts": torch.ones(3, dtype=torch.int64),
                           "responses": torch.ones(length, dtype=torch.int64),
                           "response_mask": torch.ones(length, dtype=torch.int64), "rm_scores": rm_scores,
                           "old_log_probs": torch.zeros(length)}
    batch = KVBatchMeta(keys=keys, tags=[{"seq_len": 3 + n} for n in lengths], partition_id="train")
    if pad_to is not None:
        batch = padding_utils.upsample_batch_to_divisible_size(batch, pad_to, eos_token_id=2)
    trainer = object.__new__(get_trainer_cls(cfg.trainer.v1.trainer_mode))
    trainer.config = cfg
    trainer._compute_advantage(batch, metrics={})
    return torch.stack([store.rows[k]["advantages"][0] for k in batch.keys])


def _legacy_advantages(cfg, uids, lengths, scores):
    """verl's legacy path: ray_trainer.compute_advantage on the agent loop's padded batch."""
    from tensordict import TensorDict
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    width, prompt = cfg.actor_rollout_ref.rollout.response_length, 3
    B = len(lengths)
    response_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    attention_mask = torch.cat([torch.ones(B, prompt, dtype=torch.long), response_mask], dim=1)
    rm_scores = torch.zeros(B, width)
    rm_scores[torch.arange(B), attention_mask[:, prompt:].sum(dim=1) - 1] = torch.tensor(scores)  # as _postprocess
    batch = DataProto(batch=TensorDict({"responses": torch.ones(B, width, dtype=torch.long),
                                        "response_mask": response_mask, "attention_mask": attention_mask,
                                        "token_level_scores": rm_scores, "token_level_rewards": rm_scores},
                                       batch_size=B),
                      non_tensor_batch={"uid": np.array(uids, dtype=object)})
    batch = compute_advantage(batch, adv_estimator=cfg.algorithm.adv_estimator, gamma=cfg.algorithm.gamma,
                              lam=cfg.algorithm.lam, num_repeat=cfg.actor_rollout_ref.rollout.n,
                              norm_adv_by_std_in_grpo=cfg.algorithm.get("norm_adv_by_std_in_grpo", True),
                              config=cfg.algorithm)
    return batch.batch["advantages"][:, 0]


def _length_penalty_config(alpha=0.2, limit=64, *more):
    return _verl_config("algorithm.adv_estimator=ia_rloo_length_penalty", f"+algorithm.ia_kernels.alpha={alpha}",
                        f"data.max_response_length={limit}", "actor_rollout_ref.rollout.n=4", *more)


@pytest.mark.parametrize("path", ["v1", "legacy"])
def test_length_penalty_truncation_on_both_trainer_paths(path, monkeypatch):
    """Four correct responses of 20/30/50/40 tokens, none at the 64-token limit: the 50-token one is the
    longest, not cut off (verl's v1 trainer pads the batch to 50 tokens, which once read as 'cut off')."""
    cfg = _length_penalty_config()
    assert cfg.trainer.use_v1  # verl's default trainer
    uids, lengths, scores = ["p0"] * 4, [20, 30, 50, 40], [1.0] * 4
    run = (lambda: _v1_advantages(cfg, uids, lengths, scores, monkeypatch)) if path == "v1" else \
        (lambda: _legacy_advantages(cfg, uids, lengths, scores))
    got = run()
    want = ik.group_advantages(ik.length_penalized_rewards(torch.ones(4), torch.tensor(lengths, dtype=torch.float32),
                                                           4, alpha=0.2), 4, estimator="rloo")
    print(f"{path}: advantages {[round(x, 4) for x in got.tolist()]}")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert abs(got[2].item() - (-0.0781)) < 1e-3
    # a response reaching the limit was cut off: it scores 0 on either path
    lengths = [20, 30, 64, 40]
    got = _v1_advantages(cfg, uids, lengths, scores, monkeypatch) if path == "v1" else \
        _legacy_advantages(cfg, uids, lengths, scores)
    finished = torch.tensor([1, 1, 0, 1])
    want = ik.group_advantages(ik.length_penalized_rewards(torch.ones(4), torch.tensor(lengths, dtype=torch.float32),
                                                           4, alpha=0.2, finished=finished), 4, estimator="rloo")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_length_penalty_realistic_batch_both_paths_agree(monkeypatch):
    """Eight prompts x 4, mixed correctness and lengths, a few at the limit: both paths give the
    reference, whatever each batch's padding width."""
    g = torch.Generator().manual_seed(7)
    limit, n, prompts = 48, 4, 8
    cfg = _length_penalty_config(0.3, limit)
    lengths = torch.randint(5, limit + 1, (prompts * n,), generator=g)
    lengths[[3, 9, 10, 21]] = limit
    scores = (torch.rand(prompts * n, generator=g) > 0.35).float()
    uids = [f"u{i // n}" for i in range(prompts * n)]
    ref = ik.group_advantages(ik.length_penalized_rewards(scores, lengths.float(), n, alpha=0.3,
                                                          finished=lengths < limit), n, estimator="rloo")
    v1 = _v1_advantages(cfg, uids, lengths.tolist(), scores.tolist(), monkeypatch)
    legacy = _legacy_advantages(cfg, uids, lengths.tolist(), scores.tolist())
    torch.testing.assert_close(v1, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(legacy, ref, rtol=1e-5, atol=1e-6)


def test_v1_padding_samples_with_passk(monkeypatch):
    """verl's v1 trainer appends synthetic samples (one uid, empty responses) to make the batch divisible:
    a group smaller than k. They get advantage 0 and the real groups are unchanged."""
    cfg = _verl_config("algorithm.adv_estimator=ia_passk", "+algorithm.ia_kernels.k=3",
                       "actor_rollout_ref.rollout.n=4")
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(4, 30, (8,), generator=g).tolist()
    scores = (torch.rand(8, generator=g) > 0.5).float()
    scores[:2] = torch.tensor([1.0, 0.0])
    uids = ["a"] * 4 + ["b"] * 4
    got = _v1_advantages(cfg, uids, lengths, scores.tolist(), monkeypatch, pad_to=10)
    assert got.shape == (10,)
    adv = ik.group_advantages(scores, 4, estimator="passk", k=3)
    std = torch.stack([scores[:4].std()] * 4 + [scores[4:].std()] * 4)
    torch.testing.assert_close(got[:8], adv / (std + 1e-6), rtol=1e-5, atol=1e-6)
    assert bool((got[8:] == 0).all())


def test_response_limit_errors():
    rewards, mask, uids, _, _ = _batch()
    fn = core_algos.get_adv_estimator_fn("ia_rloo_length_penalty")
    with pytest.raises(ValueError, match=r"needs the response length limit .* set algorithm.ia_kernels."
                                         r"max_response_length"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(alpha=0.1))
    with pytest.raises(ValueError, match=r"responses are 7 tokens wide, more than the response length limit 6"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=_algo(alpha=0.1, max_response_length=6))
    cfg = _length_penalty_config(0.1, 64, "+algorithm.ia_kernels.max_response_length=32")
    with pytest.raises(ValueError, match=r"max_response_length=32 disagrees with verl's "
                                         r"actor_rollout_ref.rollout.response_length=64"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg.algorithm)
    cfg = _length_penalty_config(0.1, 64, "+algorithm.ia_kernels.max_response_length=64")
    fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg.algorithm)  # agreeing: fine


@pytest.mark.parametrize("name,settings,norm,message", [
    ("ia_rloo", dict(k=4), True, r"algorithm.ia_kernels.k is not used by adv_estimator=ia_rloo"),
    ("ia_passk", dict(k=2, alpha=0.1), True, r"ia_kernels.alpha is not used by adv_estimator=ia_passk"),
    ("ia_passk_chen", dict(k=2, variant="loo"), True, r"variant is not used by adv_estimator=ia_passk_chen"),
    ("ia_grpo", dict(threshold=0.5), True, r"threshold is not used by adv_estimator=ia_grpo"),
    ("ia_rloo", dict(eps=1e-4), True, r"eps is not used by adv_estimator=ia_rloo"),
    ("ia_grpo", dict(eps=1e-4), False, r"eps is not used by adv_estimator=ia_grpo with "
                                       r"algorithm.norm_adv_by_std_in_grpo=False"),
    ("ia_passk", dict(k=2, eps=1e-4), False, r"eps is not used by adv_estimator=ia_passk with"),
    ("ia_passk", dict(k=2.5), True, r"algorithm.ia_kernels.k must be an int >= 1; got 2.5"),
    ("ia_passk", dict(k=True), True, r"algorithm.ia_kernels.k must be an int >= 1; got True"),
    ("ia_passk", dict(k="4"), True, r"algorithm.ia_kernels.k must be an int >= 1; got '4'"),
    ("ia_passk", dict(k=2, variant="LOO"), True, r"algorithm.ia_kernels.variant must be one of"),
    ("ia_grpo", dict(eps=float("nan")), True, r"algorithm.ia_kernels.eps must be a finite number; got nan"),
    ("ia_grpo", dict(eps=-1.0), True, r"algorithm.ia_kernels.eps must lie in \[0.0, inf\]; got -1.0"),
    ("ia_rloo_length_penalty", dict(alpha=1.5), True, r"algorithm.ia_kernels.alpha must lie in \[0.0, 1.0\]"),
    ("ia_rloo_length_penalty", dict(alpha="0.1"), True, r"algorithm.ia_kernels.alpha must be a finite number"),
    ("ia_rloo_length_penalty", dict(alpha=0.1, threshold=float("nan")), True,
     r"algorithm.ia_kernels.threshold must be a finite number; got nan"),
    ("ia_rloo_length_penalty", dict(alpha=0.1, max_response_length=0), True,
     r"algorithm.ia_kernels.max_response_length must be an int >= 1; got 0"),
    ("ia_grpo", {}, "False", r"algorithm.norm_adv_by_std_in_grpo must be true or false; got 'False'"),
])
def test_settings_a_estimator_would_ignore_or_misread(name, settings, norm, message):
    rewards, mask, uids, _, _ = _batch()
    cfg = _algo(**settings)
    cfg.norm_adv_by_std_in_grpo = norm
    with pytest.raises(ValueError, match=message):
        core_algos.get_adv_estimator_fn(name)(token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg)


def test_policy_loss_needs_global_counts_with_dp_like_verl():
    B, T = 4, 5
    old, logp, adv, mask = torch.zeros(B, T), torch.zeros(B, T), torch.ones(B, T), torch.ones(B, T)
    for mode in ("token-mean", "seq-mean-token-mean"):
        for name in ("vanilla", "ia_ppo"):
            with pytest.raises(ValueError, match="required when dp_size > 1"):
                core_algos.get_policy_loss_fn(name)(old, logp, adv, mask, mode, _actor(dp_size=2), None)
    with pytest.raises(ValueError, match=r"global_batch_info has unknown keys \['num_tokens'\]"):
        core_algos.get_policy_loss_fn("ia_ppo")(old, logp, adv, mask, "token-mean", _actor(num_tokens=3), None)


# ---- python -m ia_kernels.integrations.verl_check -------------------------------------------------

def _verl_check(code="from ia_kernels.integrations.verl_check import main; raise SystemExit(main())", **env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    return out.returncode, out.stdout


def test_verl_check_registered():
    rc, out = _verl_check()
    assert rc == 0 and out.strip().splitlines()[-1].startswith("registered: verl 0.9.1 has ia_kernels' estimators"), out


def test_verl_check_says_why_not():
    rc, out = _verl_check(VERL_USE_EXTERNAL_PLUGINS="none")
    assert rc == 1 and "reason: VERL_USE_EXTERNAL_PLUGINS=none disables verl's plugin loading" in out, out
    rc, out = _verl_check(VERL_USE_EXTERNAL_PLUGINS="someother")
    assert rc == 1 and "does not name 'ia_kernels'" in out, out
    # a plugin that raises while verl loads it (verl logs that at DEBUG only): the command shows the error
    broken = ("import sys; sys.modules['verl.utils.experimental.torch_functional'] = None\n"
              "from ia_kernels.integrations.verl_check import main; raise SystemExit(main())")
    rc, out = _verl_check(broken)
    assert rc == 1 and "reason: loading ia_kernels.integrations.verl failed" in out, out
    assert "verl.utils.experimental.torch_functional" in out, out

"""ia_kernels.integrations.trl against the real TRL (1.16) on the bundled tiny model, CPU.

The step-equality test trains one step with TRL's GRPOTrainer and one with IAGRPOTrainer from the
same weights and seed, with plain SGD at learning rate 1 so that the weight change is the gradient:
the weights after the step must agree to fp32 precision.
"""

import math
import warnings

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import ia_kernels as ik  # noqa: E402
from ia_kernels.integrations.trl import FALLBACKS, IAGRPOConfig, IAGRPOTrainer  # noqa: E402

from .trl_helpers import answer_reward, binary_reward, max_weight_diff, run, tiny_model_and_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer()


STEP_CASES = {
    "dapo (defaults)": {},
    "grpo": dict(loss_type="grpo"),
    "bnpo, clip-higher": dict(loss_type="bnpo", epsilon_high=0.28),
    "dr_grpo, scale_rewards none": dict(loss_type="dr_grpo", scale_rewards="none"),
    "luspo, GSPO": dict(loss_type="luspo", importance_sampling_level="sequence"),
    "dapo, grad accumulation 2, delta": dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, delta=1.5),
    "dapo, KL (beta 0.04, times the ratio)": dict(beta=0.04),
    "grpo, KL without the ratio": dict(loss_type="grpo", beta=0.04, use_bias_correction_kl=False),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_one_step_equals_trl(tiny, tmp_path, case):
    model, tokenizer = tiny
    overrides = STEP_CASES[case]
    ref, _, _ = run(GRPOTrainer, GRPOConfig, model, tokenizer, tmp_path / "trl", **overrides)
    got, trainer, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path / "ia", **overrides)
    assert not [w for w in caught if w.startswith("ia_kernels")], caught
    moved = max_weight_diff(ref, model)
    diff = max_weight_diff(ref, got)
    print(f"{case}: max |weight change| {moved:.3g}, max |difference to TRL| {diff:.3g}")
    assert moved > 1e-3  # the step did something
    assert diff <= 2e-6 * max(1.0, moved)


def test_fused_loss_forms_no_logits(tiny, tmp_path, monkeypatch):
    """The policy's log-probs never go through TRL's LM-head path, nor the LM head module."""
    model, tokenizer = tiny

    def forbidden(*args, **kwargs):
        raise AssertionError("TRL's log-prob path was called")

    monkeypatch.setattr(IAGRPOTrainer, "_get_per_token_logps_and_entropies", forbidden)
    in_loss, head_calls, losses = [False], [], []
    original = IAGRPOTrainer._compute_loss

    def compute_loss(self, model, inputs):
        in_loss[0] = True
        try:
            losses.append(original(self, model, inputs))
            return losses[-1]
        finally:
            in_loss[0] = False

    monkeypatch.setattr(IAGRPOTrainer, "_compute_loss", compute_loss)
    model = type(model).from_pretrained(model.name_or_path, dtype=torch.float32)  # fresh: hooks stay off the fixture
    hook = model.lm_head.register_forward_hook(lambda *a: head_calls.append(in_loss[0]))
    run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, max_completion_length=8)
    hook.remove()
    assert losses and head_calls and not any(head_calls)  # the head ran for generation only


class Recording(IAGRPOTrainer):
    records = []

    def _ia_advantages(self, rewards_per_func, completion_ids_list):
        out = super()._ia_advantages(rewards_per_func, completion_ids_list)
        Recording.records.append((rewards_per_func.clone(), [list(c) for c in completion_ids_list], out.clone()))
        return out


def test_passk_with_length_penalty_run(tiny, tmp_path):
    """A few steps of pass@k + length penalty: the advantages that reached the loss are ours, NaN-aware."""
    model, tokenizer = tiny
    Recording.records = []
    got, trainer, caught = run(Recording, IAGRPOConfig, model, tokenizer, tmp_path, reward_funcs=(answer_reward,),
                               chat=True, n_prompts=6, max_steps=3, learning_rate=1e-2, advantage_estimator="passk",
                               k=2, length_penalty_alpha=0.3, max_completion_length=32, temperature=1.5)
    assert not [w for w in caught if w.startswith("ia_kernels")], caught
    assert len(Recording.records) == 3
    assert all(math.isfinite(x) for x in trainer.state.log_history[-2].values() if isinstance(x, float))
    eos = set(trainer.eos_token_ids)
    saw_nan, saw_penalty = False, False
    for rewards_per_func, ids, adv in Recording.records:
        r = rewards_per_func[:, 0]
        saw_nan |= bool(torch.isnan(r).any())
        lengths = torch.tensor([len(c) for c in ids])
        ended = torch.tensor([len(c) > 0 and c[-1] in eos for c in ids])
        penalised = ik.length_penalized_rewards((r > 0.5) & ended, lengths, 4, alpha=0.3)
        penalised = torch.where(torch.isnan(r), r, penalised)
        want = ik.group_advantages(penalised, 4, estimator="passk", k=2, nan_policy="omit")
        torch.testing.assert_close(adv, want)
        assert bool((adv[torch.isnan(r)] == 0).all())
        saw_penalty |= bool(((penalised > 0) & (penalised < 1)).any())
    assert saw_penalty  # correct completions that ended got length-penalised rewards
    assert saw_nan  # the reward function's None reached the estimator as "no reward"
    assert max_weight_diff(got, model) > 0


def test_eval_groups_smaller_than_k(tiny, tmp_path):
    model, tokenizer = tiny
    args = IAGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                        num_generations_eval=2, advantage_estimator="passk", k=3, use_cpu=True, report_to="none",
                        max_completion_length=8)
    from datasets import Dataset
    trainer = IAGRPOTrainer(model=model, reward_funcs=[binary_reward], args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_dict({"prompt": ["1 + 1 ="] * 2}))
    trainer.model.eval()
    rewards = torch.tensor([[1.], [0.], [float("nan")], [1.], [0.], [0.]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adv = trainer._ia_advantages(rewards, [[5, 1]] * 6)
    trainer.model.train()
    assert any("smaller than k=3" in str(w.message) for w in caught)
    torch.testing.assert_close(adv, ik.group_advantages(rewards[:, 0], 2, estimator="passk", k=2, nan_policy="omit"))


def test_fallback_warns_once_and_trains(tiny, tmp_path):
    model, tokenizer = tiny
    got, _, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, loss_type="sapo", max_steps=2,
                         per_device_train_batch_size=4, gradient_accumulation_steps=2)
    ours = [w for w in caught if w.startswith("ia_kernels")]
    assert len(ours) == 1 and "loss_type" in ours[0] and FALLBACKS["loss_type"] in ours[0], ours
    assert max_weight_diff(got, model) > 0


def test_config_errors(tmp_path):
    def make(**kw):
        return IAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_generations=4,
                            per_device_train_batch_size=4, **kw)

    with pytest.raises(ValueError, match="'passk' needs k, an int >= 1"):
        make(advantage_estimator="passk")
    with pytest.raises(ValueError, match="k=8 is larger than num_generations=4"):
        make(advantage_estimator="passk", k=8)
    with pytest.raises(ValueError, match="k is used by advantage_estimator 'passk' and 'passk_chen' only"):
        make(k=2)
    with pytest.raises(ValueError, match="advantage_estimator must be one of"):
        make(advantage_estimator="ppo")
    with pytest.raises(ValueError, match="'majority' needs answer ids"):
        make(advantage_estimator="majority")
    with pytest.raises(ValueError, match="length_penalty_alpha must be None or a number in"):
        make(length_penalty_alpha=2.0)
    with pytest.raises(ValueError, match="passk_variant must be one of"):
        make(advantage_estimator="passk", k=2, passk_variant="x")
    assert make().advantage_estimator == "grpo" and make().fused_loss

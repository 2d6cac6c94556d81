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

from .trl_helpers import (answer_reward, binary_reward, dyadic_reward, max_weight_diff, run,  # noqa: E402
                          tiny_model_and_tokenizer)


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
    "dapo, gradient checkpointing": dict(gradient_checkpointing=True),
    # TRL gives the head an instance forward: the loss's call through the head must restore it (2 steps)
    "dapo, cast_lm_head_to_fp32, 2 steps": dict(cast_lm_head_to_fp32=True, max_steps=2, learning_rate=0.3),
    "dapo, num_iterations 2, steps_per_generation 2 (off-policy)": dict(num_iterations=2, steps_per_generation=2,
                                                                       max_steps=4, per_device_train_batch_size=4,
                                                                       learning_rate=0.3),
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
    """The policy's log-probs never go through TRL's LM-head path; the loss runs as the LM head
    module's forward (so that the hooks FSDP2 / ZeRO-3 put on the head fire) and returns no logits."""
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
    vocab = model.lm_head.weight.shape[0]

    def record(module, args, output):
        logits = isinstance(output, torch.Tensor) and output.shape[-1] == vocab
        head_calls.append((in_loss[0], logits))

    hook = model.lm_head.register_forward_hook(record)
    run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, max_completion_length=8)
    hook.remove()
    assert losses
    in_loss_calls = [logits for loss, logits in head_calls if loss]
    assert len(in_loss_calls) == len(losses) and not any(in_loss_calls)  # one head call per loss, no logits
    assert any(logits for loss, logits in head_calls if not loss)  # generation: logits


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
                               k=2, length_penalty_alpha=0.3, max_completion_length=64, temperature=1.5)
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


def _config(tmp_path, **kw):
    return IAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_generations=4,
                        per_device_train_batch_size=4, **kw)


@pytest.mark.parametrize("settings,message", [
    # settings the chosen estimator would silently ignore
    (dict(advantage_estimator="rloo", scale_rewards="group"),
     r"scale_rewards='group' does not apply to advantage_estimator='rloo', which does not divide by a std"),
    (dict(advantage_estimator="rloo", scale_rewards=True), r"scale_rewards='group' does not apply"),
    (dict(advantage_estimator="passk", k=2, scale_rewards="batch"), r"scale_rewards='batch' does not apply"),
    (dict(advantage_estimator="passk_chen", k=2, scale_rewards="none"),
     r"scale_rewards='none' does not apply to advantage_estimator='passk_chen', which divides by its pass@k std"),
    (dict(advantage_estimator="dr_grpo", scale_rewards="group"), r"does not apply to advantage_estimator='dr_grpo'"),
    (dict(advantage_estimator="rloo", passk_variant="loo"), r"passk_variant is used by advantage_estimator 'passk' "
                                                            r"only; got passk_variant='loo' with"),
    (dict(correct_threshold=0.7), r"correct_threshold is used with length_penalty_alpha only"),
    (dict(advantage_estimator="rloo", multi_objective_aggregation="normalize_then_sum"),
     r"multi_objective_aggregation='normalize_then_sum' .* cannot be combined with advantage_estimator='rloo'"),
    (dict(length_penalty_alpha=0.1, multi_objective_aggregation="normalize_then_sum"),
     r"cannot be combined with advantage_estimator='grpo' or length_penalty_alpha"),
    (dict(length_penalty_alpha=0.1, scale_rewards="batch"), r"scale_rewards='batch' .* cannot be combined with "
                                                            r"length_penalty_alpha"),
    # values that would read wrong
    (dict(length_penalty_alpha=0.1, correct_threshold=float("nan")), r"correct_threshold must be a finite number; "
                                                                    r"got nan"),
    (dict(length_penalty_alpha=0.1, correct_threshold=float("inf")), r"correct_threshold must be a finite number"),
    (dict(length_penalty_alpha=0.1, correct_threshold="0.5"), r"correct_threshold must be a finite number; got '0.5'"),
    (dict(length_penalty_alpha=0.1, correct_threshold=True), r"correct_threshold must be a finite number; got True"),
    (dict(length_penalty_alpha=float("nan")), r"length_penalty_alpha must be None or a number in \[0, 1\]; got nan"),
    (dict(length_penalty_alpha="0.1"), r"length_penalty_alpha must be None or a number in \[0, 1\]; got '0.1'"),
    (dict(fused_loss="maybe"), r"fused_loss must be true or false .*; got 'maybe'"),
    (dict(fused_loss=1), r"fused_loss must be true or false .*; got 1"),
    (dict(fused_loss=None), r"fused_loss must be true or false .*; got None"),
    (dict(advantage_estimator=None), r"advantage_estimator must be one of .*; got None"),
    (dict(advantage_estimator="passk", k=4, passk_variant="loo"), r"passk_variant='loo' needs k < num_generations"),
    (dict(advantage_estimator="passk", k="2"), r"'passk' needs k, an int >= 1 \(got k='2'\)"),
])
def test_config_refuses_ignored_and_misread_settings(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **settings)


def test_config_resolves_defaults_and_bool_strings(tmp_path):
    c = _config(tmp_path)
    assert (c.scale_rewards, c.passk_variant, c.correct_threshold, c.fused_loss) == ("group", None, None, True)
    c = _config(tmp_path, advantage_estimator="passk", k=2, length_penalty_alpha=0.0)
    assert (c.passk_variant, c.correct_threshold) == ("loo-1", 0.5)
    assert _config(tmp_path, advantage_estimator="rloo").scale_rewards == "none"  # what rloo does
    assert _config(tmp_path, advantage_estimator="passk_chen", k=2).scale_rewards == "group"
    assert _config(tmp_path, advantage_estimator="rloo", scale_rewards="none").scale_rewards == "none"
    assert _config(tmp_path, advantage_estimator="rloo", scale_rewards=False).scale_rewards == "none"
    assert _config(tmp_path, scale_rewards="batch").scale_rewards == "batch"  # TRL's own grpo: honoured
    for text, value in [("no", False), ("False", False), ("false", False), ("0", False), ("true", True),
                        ("Yes", True), (False, False)]:
        assert _config(tmp_path, fused_loss=text).fused_loss is value, text


def test_config_resolved_values_are_accepted(tmp_path):
    """A resolved config's own values, given back explicitly (a config written out and read again),
    build the same config: what a setting resolves to is never refused."""
    fields = ("advantage_estimator", "k", "passk_variant", "scale_rewards", "length_penalty_alpha",
              "correct_threshold", "fused_loss")
    for settings in (dict(advantage_estimator="rloo", length_penalty_alpha=0.2),
                     dict(advantage_estimator="passk_chen", k=2), dict(advantage_estimator="passk", k=2),
                     dict(scale_rewards="none", length_penalty_alpha=0.0, correct_threshold=0.9)):
        c = _config(tmp_path, **settings)
        again = _config(tmp_path, **{f: getattr(c, f) for f in fields})
        assert [getattr(again, f) for f in fields] == [getattr(c, f) for f in fields], settings


def test_fused_loss_string_false_runs_trl_loss(tiny, tmp_path, monkeypatch):
    """fused_loss='no' (a YAML/CLI string) runs TRL's loss, not ours."""
    model, tokenizer = tiny
    calls = []
    monkeypatch.setattr(IAGRPOTrainer, "_ia_fused_loss", lambda *a: calls.append(1))
    got, _, _ = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, fused_loss="no", max_completion_length=8)
    assert not calls and max_weight_diff(got, model) > 0


def _history(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def test_truncation_stall_is_logged_and_warned(tiny, tmp_path):
    """Every completion cut off (2 tokens, no EOS) with a length penalty: every completion counts as
    incorrect, advantages are all 0 and the weights do not move. TRL's `reward` still reads the raw
    reward: reward_optimized and length_penalty/cut_off_ratio say what was optimised, and a warning
    says why nothing moves."""
    model, tokenizer = tiny
    def half_right(completions, **kwargs):  # every other completion right, whatever the model wrote
        return [float(i % 2 == 0) for i in range(len(completions))]

    got, trainer, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, length_penalty_alpha=0.0,
                               max_completion_length=2, max_steps=2, reward_funcs=(half_right,))
    (first, second) = _history(trainer)
    print({k: first[k] for k in ("reward", "reward_optimized", "length_penalty/cut_off_ratio",
                                 "length_penalty/correct_cut_off_ratio", "frac_advantage_zero")})
    assert first["completions/clipped_ratio"] == 1.0 and first["length_penalty/cut_off_ratio"] == 1.0
    assert first["reward"] > 0 and first["reward_optimized"] == 0.0
    assert first["length_penalty/correct_cut_off_ratio"] == first["reward"] and first["frac_advantage_zero"] == 1.0
    assert max_weight_diff(got, model) == 0.0
    stall = [w for w in caught if "advantage 0, so the policy does not move" in w]
    assert len(stall) == 1 and "max_completion_length=2" in stall[0], caught  # once, for two stalled steps


def test_passk_logs_zero_advantage_fraction(tiny, tmp_path):
    model, tokenizer = tiny
    _, trainer, _ = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, reward_funcs=(binary_reward,),
                        advantage_estimator="passk", k=4, max_completion_length=8)
    (h,) = _history(trainer)
    assert "frac_advantage_zero" in h and h["frac_advantage_zero"] >= h["frac_reward_zero_std"]


DASHBOARD_CASES = {
    "on-policy, KL": dict(beta=0.04),
    "num_iterations 2 (off-policy), KL, clip-higher": dict(num_iterations=2, max_steps=2, beta=0.04,
                                                          epsilon_high=0.28, learning_rate=0.3),
    "GSPO, num_iterations 2": dict(num_iterations=2, max_steps=2, importance_sampling_level="sequence",
                                   loss_type="grpo", learning_rate=0.3, epsilon=3e-4),
}


@pytest.mark.parametrize("case", list(DASHBOARD_CASES))
def test_dashboard_equals_trl(tiny, tmp_path, case):
    """The metrics a TRL user reads: every key TRL logs, with TRL's value (clip_ratio/low_min and
    high_max included; off-policy steps have ratios != 1 and clip)."""
    model, tokenizer = tiny
    overrides = DASHBOARD_CASES[case]
    _, ref, _ = run(GRPOTrainer, GRPOConfig, model, tokenizer, tmp_path / "trl", reward_funcs=(dyadic_reward,),
                    **overrides)
    _, got, _ = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path / "ia", reward_funcs=(dyadic_reward,),
                    **overrides)
    clipped = False
    for want, have in zip(_history(ref), _history(got), strict=True):
        missing = sorted(set(want) - set(have))
        assert not missing, missing
        for key, value in want.items():
            if key in ("loss", "grad_norm", "learning_rate", "epoch", "step_time") or not isinstance(value, float):
                continue
            assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), (key, have[key], value)
        clipped |= want.get("clip_ratio/region_mean", 0) > 0
    if overrides.get("num_iterations", 1) > 1:
        assert clipped  # the off-policy step's clip metrics were exercised


def test_peft_modules_to_save_head_runs_fused(tiny, tmp_path):
    """LoRA on the attention projections with the LM head in modules_to_save: the head is one trained
    tensor (the adapter's copy), so the fused loss runs, and the step equals TRL's."""
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny
    lora = dict(peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
    ref, _, _ = run(GRPOTrainer, GRPOConfig, model, tokenizer, tmp_path / "trl", trainer_kwargs=lora)
    got, trainer, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path / "ia", trainer_kwargs=lora)
    assert not [w for w in caught if w.startswith("ia_kernels")], caught
    head = trainer.model.base_model.model.lm_head
    assert hasattr(head, "modules_to_save")
    a, b = ref.state_dict(), got.state_dict()
    trained = [k for k in a if "modules_to_save" in k or "lora_" in k]
    assert any("modules_to_save" in k for k in trained)
    moved = max((a[k] - model.state_dict().get(k.replace("base_model.model.", "").replace(
        "modules_to_save.default.", ""), a[k])).abs().max().item() for k in trained if "modules_to_save" in k)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"modules_to_save head: moved {moved:.3g}, max |difference to TRL| {diff:.3g}")
    assert moved > 1e-3 and diff <= 2e-6 * max(1.0, moved)


def test_trl_refuses_lora_on_lm_head(tiny, tmp_path):
    """README: LoRA on lm_head never reaches ia_kernels (TRL 1.16 refuses it in GRPOTrainer.__init__)."""
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny
    lora = dict(peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="Applying a PEFT adapter to `lm_head` is not supported"):
        run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path, trainer_kwargs=lora)


def test_cli_and_yaml_settings_parse(tmp_path):
    """TRL's own parser (CLI flags, a YAML config) gives IAGRPOConfig typed values: 'no' is False."""
    from trl import TrlParser

    common = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--num_generations", "4",
              "--per_device_train_batch_size", "4"]
    (c,) = TrlParser((IAGRPOConfig,)).parse_args_and_config(
        common + ["--fused_loss", "no", "--advantage_estimator", "passk", "--k", "2", "--length_penalty_alpha", "0.1",
                  "--correct_threshold", "0.7"])
    assert (c.fused_loss, c.k, c.length_penalty_alpha, c.correct_threshold, c.passk_variant) == (False, 2, 0.1, 0.7,
                                                                                                 "loo-1")
    config = tmp_path / "grpo.yaml"
    config.write_text("fused_loss: 'false'\nadvantage_estimator: rloo\nscale_rewards: none\nlength_penalty_alpha: 0.2\n")
    (c,) = TrlParser((IAGRPOConfig,)).parse_args_and_config(common + ["--config", str(config)])
    assert (c.fused_loss, c.advantage_estimator, c.scale_rewards, c.correct_threshold) == (False, "rloo", "none", 0.5)
    config.write_text("advantage_estimator: rloo\nscale_rewards: group\n")
    with pytest.raises(ValueError, match="scale_rewards='group' does not apply to advantage_estimator='rloo'"):
        TrlParser((IAGRPOConfig,)).parse_args_and_config(common + ["--config", str(config)])

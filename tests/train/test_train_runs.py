"""Short ia-train runs on the bundled tiny model: every objective, the evaluation path, resume."""

import json
import math

import ia_kernels
import pytest
import torch

from ia_train.runtime import checkpoint
from ia_train.config import OBJECTIVES, Config
from ia_train.runtime.files import RunFileError
from ia_train.runtime.logger import read_metrics
from ia_train.loop import Hooks, Kernels, run, validate

SMALL = dict(model="tiny", task="chain_sum", prompts_per_step=2, n=4, k=2, max_new_tokens=20, eval_problems=0,
             minibatches=2, lr=3e-3, warmup_steps=1, tensorboard=False, threads=0)


def small_config(tmp_path, **over):
    cfg = Config(**{**SMALL, "out": str(tmp_path / "run"), **over})
    validate(cfg)
    return cfg


class Spy:
    """Records the calls ia_train makes to an ia_kernels function (arguments and result); handed to the
    run in its Hooks (spying)."""

    def __init__(self, name):
        self.name, self.real, self.calls = name, getattr(ia_kernels, name), []

    def __call__(self, *args, **kwargs):
        out = self.real(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def without_times(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall times (time_sample, time_<phase>): what a repeated run repeats."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def spying(*spies: Spy) -> Hooks:
    """The hooks of a run whose calls to these ops are recorded."""
    return Hooks(kernels=Kernels(**{spy.name: spy for spy in spies}))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_steps_of_every_objective(objective, tmp_path):
    over = {"k": 4} if objective == "majority" else {}
    cfg = small_config(tmp_path, objective=objective, steps=2, **over)
    advantages, losses = Spy("group_advantages"), Spy("linear_ppo_loss")
    run(cfg, spying(advantages, losses))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["mean_tokens"] > 0
    # The named objective computed the advantages of each step: its estimator, with k where it has one,
    # from the step's rewards (n per prompt), and with the answers for the majority vote.
    assert len(advantages.calls) == 2
    batch = cfg.prompts_per_step * cfg.n
    for (rewards, n), kw, adv in advantages.calls:
        assert kw["estimator"] == objective and n == cfg.n and rewards.shape == (batch,)
        assert kw["k"] == (cfg.k if objective in ("passk", "passk_chen", "majority") else None)
        assert (kw["answers"] is not None and kw["answers"].shape == (batch,)) == (objective == "majority")
    # Those advantages, and nothing else, reached the loss: each step's minibatches hold them all once.
    assert len(losses.calls) == 2 * cfg.minibatches
    for step, (_, _, adv) in enumerate(advantages.calls):
        seen = torch.cat([args[4].cpu() for args, _, _ in losses.calls[step * cfg.minibatches:(step + 1) * cfg.minibatches]])
        assert torch.equal(seen.sort().values, adv.float().sort().values)
        assert rows[step]["adv_abs"] == pytest.approx(float(adv.abs().mean()))
    for _, kw, _ in losses.calls:  # Dr. GRPO's constant normaliser; the others the default aggregation
        assert (kw.get("aggregation"), kw.get("norm_length")) == (
            ("seq-mean-token-sum-norm", cfg.max_new_tokens) if objective == "dr_grpo" else (None, None))
    # Two steps of updates happened and were saved: AdamW counted minibatches steps per step.
    opt = torch.load(tmp_path / "run" / "checkpoints" / "latest" / "optimizer.pt")
    assert {int(v["step"]) for v in opt["state"].values()} == {2 * cfg.minibatches}
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 2
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000


def test_length_penalty_kl_epochs_and_evaluation(tmp_path):
    cfg = small_config(tmp_path, objective="rloo", steps=2, alpha=0.2, kl_coef=0.05, ppo_epochs=2, grad_accum=2,
                       minibatches=1, eval_problems=3, eval_n=2)
    penalty, advantages = Spy("length_penalized_rewards"), Spy("group_advantages")
    losses = Spy("linear_ppo_loss")
    summary = run(cfg, spying(penalty, advantages, losses))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for when in ("before", "after"):
        for key in ("pass@1", "pass@k", "maj@k", "mean_tokens"):
            assert key in saved[when] and len(saved[when][key + "_ci"]) == 2
        assert saved[when]["problems"] == 3
    assert saved["k"] == 2 and saved["n"] == 2 and summary["after"] == saved["after"]
    assert saved["change"]["pass@1"] == pytest.approx(saved["after"]["pass@1"] - saved["before"]["pass@1"])
    assert (tmp_path / "run" / "before_after.png").is_file()
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2
    # The length penalty: applied every step with alpha, and its rewards are the ones the advantages use.
    assert len(penalty.calls) == 2
    for ((correct, lengths, n), kw, penalized), ((rewards, _), _, _), row in zip(penalty.calls, advantages.calls, rows):
        assert kw["alpha"] == 0.2 and n == cfg.n
        assert torch.equal(rewards.cpu(), penalized) and row["reward"] == pytest.approx(float(penalized.mean()))
        # correct responses lose reward with length, wrong ones keep 0
        assert torch.all(penalized[~correct] == 0) and torch.all(penalized[correct] <= 1)
        # responses cut off at the token limit (no EOS) score 0 (Arora & Zanette's truncation rule)
        finished = kw["finished"]
        assert finished.dtype == torch.bool and finished.shape == correct.shape
        assert torch.all(penalized[~finished] == 0)
        assert torch.all(finished[lengths < cfg.max_new_tokens])  # a shorter response ended with EOS
    # The KL penalty: every loss call gets the frozen reference's log-probs and kl_coef, and the step
    # reports the KL against the reference.
    assert len(losses.calls) == cfg.steps * cfg.ppo_epochs * cfg.minibatches * cfg.grad_accum
    for _, kw, _ in losses.calls:
        assert kw["kl_coef"] == 0.05 and kw["ref_logp"] is not None
    assert all("kl_ref" in r and math.isfinite(r["kl_ref"]) for r in rows)
    # Two PPO epochs over one minibatch of two micro-batches: each sequence is seen twice per step.
    per_step = cfg.prompts_per_step * cfg.n
    assert all(args[0].shape[0] == per_step // cfg.grad_accum for args, _, _ in losses.calls)


def test_a_run_that_diverges_stops_before_writing_a_checkpoint(tmp_path, capsys):
    from ia_train.cli import main

    def poison(r, row):  # what an overflowing update does to the weights, before the step's checkpoint
        with torch.no_grad():
            r.model.lm.lm_head.weight.fill_(float("nan"))  # model: the Policy around the causal LM

    out = tmp_path / "run"
    code = main(["--steps", "2", "--checkpoint-every", "1", "--prompts-per-step", "2", "--n", "4", "--k", "2",
                 "--max-new-tokens", "8", "--eval-problems", "0", "--tensorboard", "false", "--out", str(out)],
                Hooks(on_step_end=poison))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ia-train")]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("ia-train: error: step 1: ") and "non-finite values; no checkpoint was written" in err[0]
    assert not (out / "checkpoints").exists()


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    common = dict(objective="grpo", steps=4, checkpoint_every=2)
    full = small_config(tmp_path / "a", **common)
    run(full)
    killed = small_config(tmp_path / "b", stop_after=3, **common)
    out = run(killed)
    assert out["stopped_at"] == 3
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "run")] == [1, 2, 3]
    resumed = small_config(tmp_path / "b", resume=True, **common)
    run(resumed)
    a, b = read_metrics(tmp_path / "a" / "run"), read_metrics(tmp_path / "b" / "run")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # step 3 of the killed run is replaced, not repeated
    assert without_times(a) == without_times(b)
    wa = torch.load(tmp_path / "a" / "run" / "checkpoints" / "latest" / "model.pt")
    wb = torch.load(tmp_path / "b" / "run" / "checkpoints" / "latest" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_crash_while_saving_leaves_the_latest_checkpoint_intact(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 2, model, opt, sched, {"data_position": 4})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = torch.save
    calls = []

    def dying_save(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:  # the optimiser file of the new checkpoint
            raise OSError("disk full")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(RunFileError) as failed:
        checkpoint.save(root, 4, model, opt, sched, {"data_position": 8})
    assert str(failed.value) == (f"cannot write {root}/step-000004.tmp/optimizer.pt: write failed (disk full); the "
                                 "last good checkpoint (step-000002) is intact: make room and continue with --resume")
    assert not list(root.glob("*.tmp"))  # the partial checkpoint is removed at once, freeing its space
    monkeypatch.setattr(torch, "save", real_save)
    assert (root / "latest").resolve().name == "step-000002"
    fresh = torch.nn.Linear(3, 2)
    state = checkpoint.load(root, fresh, torch.optim.AdamW(fresh.parameters()), sched)
    assert state["step"] == 2 and state["data_position"] == 4
    assert all(torch.equal(saved[k], fresh.state_dict()[k]) for k in saved)
    checkpoint.save(root, 4, model, opt, sched, {"data_position": 8})  # the next save cleans up
    assert (root / "latest").resolve().name == "step-000004"
    assert not list(root.glob("*.tmp"))


def test_resume_after_sigkill(tmp_path):
    """A real crash: the run's process is killed (SIGKILL) once it has logged step 3 of 6."""
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["--task", SMALL["task"], "--objective", "rloo", "--steps", "6", "--checkpoint-every", "2",
             "--prompts-per-step", "2", "--n", "4", "--k", "2", "--max-new-tokens", "20", "--eval-problems", "0",
             "--minibatches", "2", "--lr", "3e-3", "--warmup-steps", "1", "--tensorboard", "false"]
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ia_train", *flags, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(read_metrics(out)) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(out)) < 6, "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "ia_train", "--resume", "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full = small_config(tmp_path / "full", objective="rloo", steps=6, checkpoint_every=2)
    run(full)
    assert without_times(read_metrics(out)) == without_times(read_metrics(tmp_path / "full" / "run"))

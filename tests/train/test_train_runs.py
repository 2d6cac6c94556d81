"""Short ia-train runs on the bundled tiny model: every objective, the evaluation path, resume."""

import json
import math

import pytest
import torch

from ia_train import checkpoint
from ia_train.config import OBJECTIVES, Config, validate
from ia_train.files import RunFileError
from ia_train.logger import read_metrics
from ia_train.train import run

SMALL = dict(model="tiny", task="chain_sum", prompts_per_step=2, n=4, k=2, max_new_tokens=20, eval_problems=0,
             minibatches=2, lr=3e-3, warmup_steps=1, tensorboard=False, threads=0)


def small_config(tmp_path, **over):
    cfg = Config(**{**SMALL, "out": str(tmp_path / "run"), **over})
    validate(cfg)
    return cfg


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_steps_of_every_objective(objective, tmp_path):
    over = {"k": 4} if objective == "majority" else {}
    cfg = small_config(tmp_path, objective=objective, steps=2, **over)
    run(cfg)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["mean_tokens"] > 0
    assert (tmp_path / "run" / "checkpoints" / "latest" / "model.pt").is_file()
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000


def test_length_penalty_kl_epochs_and_evaluation(tmp_path):
    cfg = small_config(tmp_path, objective="rloo", steps=2, alpha=0.2, kl_coef=0.05, ppo_epochs=2, grad_accum=2,
                       minibatches=1, eval_problems=3, eval_n=2)
    summary = run(cfg)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for when in ("before", "after"):
        for key in ("pass@1", "pass@k", "maj@k", "mean_tokens"):
            assert key in saved[when] and len(saved[when][key + "_ci"]) == 2
        assert saved[when]["problems"] == 3
    assert saved["k"] == 2 and saved["n"] == 2 and summary["after"] == saved["after"]
    assert saved["change"]["pass@1"] == pytest.approx(saved["after"]["pass@1"] - saved["before"]["pass@1"])
    assert (tmp_path / "run" / "before_after.png").is_file()
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all("kl_ref" in r or "approx_kl" in r for r in rows)


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
    drop = ("time_sample", "time_update")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]
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

    flags = ["--objective", "rloo", "--steps", "6", "--checkpoint-every", "2", "--prompts-per-step", "2",
             "--n", "4", "--k", "2", "--max-new-tokens", "20", "--eval-problems", "0", "--minibatches", "2",
             "--lr", "3e-3", "--warmup-steps", "1", "--tensorboard", "false"]
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
    drop = ("time_sample", "time_update")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(read_metrics(out)) == strip(read_metrics(tmp_path / "full" / "run"))

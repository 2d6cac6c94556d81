"""Ctrl-C and SIGTERM: `ia-train` and `ia-train study` stop promptly, stop what they started, say how to
continue in one line, exit 128 + the signal, and leave everything resumable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SMALL = ["--objective", "grpo", "--prompts-per-step", "2", "--n", "4", "--k", "2", "--max-new-tokens", "12",
         "--eval-problems", "0", "--minibatches", "1", "--tensorboard", "false", "--threads", "1"]


def start(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ia_train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def wait_for(condition, seconds=120.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail("the condition was not reached in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split(") ")[-1][0] != "Z"


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_training_stops_on_a_signal_and_resumes(sig, status, tmp_path):
    out = tmp_path / "run"
    proc = start([*SMALL, "--steps", "400", "--checkpoint-every", "1", "--out", str(out)], tmp_path)
    wait_for(lambda: (out / "checkpoints" / "latest").exists())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines()[-1] == "ia-train: interrupted; continue with --resume"
    done = len((out / "metrics.jsonl").read_text().splitlines())
    resumed = subprocess.run([sys.executable, "-m", "ia_train", "--resume", "--steps", str(done + 1), "--out", str(out)],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_study_stops_its_runs_and_starts_no_more(sig, status, tmp_path):
    """The study used to keep starting queued runs after Ctrl-C. Now: no run is left running, none
    starts, and the interrupted run is started over by the next `ia-train study`."""
    out = tmp_path / "study"
    proc = start(["study", "--quick", "--grid", "length", "--steps", "200", "--eval-problems", "3", "--jobs", "1",
                  "--threads", "1", "--out", str(out)], tmp_path)
    first = out / "runs" / "length-alpha0-seed0" / "metrics.jsonl"
    wait_for(lambda: first.exists() and first.read_text().count("\n") >= 1)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert children, "the study's run process was not found"
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert time.time() - t0 < 30
    assert err.strip().splitlines()[-1] == ("ia-train study: interrupted (its runs were stopped); run the same "
                                            "command again to continue")
    wait_for(lambda: not any(alive(pid) for pid in children), seconds=15)
    time.sleep(2)
    assert not (out / "runs" / "length-alpha0.4-seed0").exists()  # the queued run never started
    assert not (out / "runs" / "length-alpha0-seed0" / "summary.json").exists()  # to be run again
    assert not (out / "study.json").exists()


def test_a_study_run_stopped_midway_is_started_over(tmp_path):
    """What the next `ia-train study` does with the directory of a run it stopped: train it again
    from the start (the study's runs keep no checkpoints), here in a grid of one run."""
    from ia_train.study import RunSpec, run_grid

    spec = RunSpec("r", "length", "alpha=0", (("alpha", 0.0), ("eval_n", 8), ("eval_problems", 2), ("steps", 1),
                                              ("prompts_per_step", 2), ("n", 4), ("k", 2), ("max_new_tokens", 12)))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")  # what a stopped run leaves
    summaries, failures = run_grid([spec], tmp_path, jobs=1, threads=1, extra=["--tensorboard", "false"],
                                   say=lambda line: None)
    assert failures == {} and summaries["r"]["last_step"]["step"] == 1


def test_a_study_run_stopped_after_a_checkpoint_continues_from_it(tmp_path):
    """A study's runs keep checkpoints (every CHECKPOINT_EVERY steps): the next `ia-train study`
    continues a stopped run from its last one with --resume, unless the directory holds a run of other
    settings, which is started over."""
    from ia_train.study import RunSpec, resumable, run_grid

    settings = (("alpha", 0.0), ("checkpoint_every", 1), ("eval_n", 8), ("eval_problems", 2), ("steps", 2),
                ("prompts_per_step", 2), ("n", 4), ("k", 2), ("max_new_tokens", 12), ("tensorboard", False))
    spec = RunSpec("r", "length", "alpha=0", settings)
    run_dir = tmp_path / "r"
    from ia_train.study import flags

    stopped = subprocess.run([sys.executable, "-m", "ia_train", "--out", str(run_dir), "--threads", "1",
                              *flags(spec.config), "--stop-after", "1"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert stopped.returncode == 0, stopped.stderr
    assert resumable(run_dir, spec) and not (run_dir / "summary.json").exists()
    other = RunSpec("r", "length", "alpha=0.4", tuple((k, 0.4 if k == "alpha" else v) for k, v in settings))
    assert not resumable(run_dir, other)
    summaries, failures = run_grid([spec], tmp_path, jobs=1, threads=1, extra=[], say=lambda line: None)
    assert failures == {} and summaries["r"]["last_step"]["step"] == 2
    log = (run_dir / "log.txt").read_text()
    assert "--resume" in log and "resuming at step 1" in log
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

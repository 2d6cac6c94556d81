"""Data-parallel ia-train (distributed.py) on CPU over gloo, with real processes (torchrun).

- a 2-rank PPO update equals the 1-process update of the same global batch (token-mean and
  seq-mean aggregations, gradient clipping on): the loss is normalised by global counts;
- a 2-process `torchrun -m ia_train` run ends with identical parameters on both ranks, its
  sharded (DCP) checkpoint is verified by its manifest (a damaged shard falls back to the previous
  checkpoint) and resumes in one process, and that run's checkpoint resumes under torchrun;
- an inconsistent launcher environment, or prompts that do not split across the processes, stop
  with one line (exit status 2).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ia_train.cli import main

SCRIPTS = Path(__file__).resolve().parent / "distributed_scripts"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("objective", ["passk", "dr_grpo"])  # token-mean; seq-mean-token-sum-norm
def test_two_rank_step_equals_one_process_step(tmp_path, objective):
    script = str(SCRIPTS / "one_step.py")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, str(one), objective], env=clean_env(), check=True,
                   capture_output=True, timeout=120)
    torchrun([script, str(two), objective])
    a, b = torch.load(one), torch.load(two)
    # the ranks hold 4 and 33 response tokens: without global normalisation the loss would be off by far
    assert b["stats"]["loss"] == pytest.approx(a["stats"]["loss"], rel=1e-5)
    assert b["stats"]["grad_norm"] == pytest.approx(a["stats"]["grad_norm"], rel=1e-5)
    worst = max(float((a["params"][k] - b["params"][k]).abs().max()) for k in a["params"])
    assert worst < 1e-5, worst  # one AdamW step of lr 1e-3: fp32 rounding of the gradient sums only


SMALL = ["--prompts-per-step", "4", "--n", "4", "--k", "2", "--max-new-tokens", "12", "--eval-problems", "6",
         "--eval-n", "4", "--checkpoint-every", "2", "--tensorboard", "false"]


def test_torchrun_run_identical_ranks_and_resume_across_process_counts(tmp_path, capsys):
    out = tmp_path / "run"
    torchrun([str(SCRIPTS / "run_and_hash.py"), "--", *SMALL, "--steps", "2", "--checkpoint-every", "1",
              "--out", str(out)])
    hashes = {p.name: p.read_text() for p in out.glob("params-rank*.sha256")}
    assert len(hashes) == 2 and len(set(hashes.values())) == 1, hashes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["world_size"] == 2 and "after" in summary
    latest = out / "checkpoints" / "latest"
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["format"] == "dcp" and manifest["world_size"] == 2 and manifest["step"] == 2
    assert {"state.pt", "dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= set(manifest["files"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    # a damaged shard file is caught by the manifest: the previous checkpoint is used
    shard = latest / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    # the 2-process checkpoint resumes in one process (no launcher): DCP reshards
    assert main([*SMALL, "--steps", "4", "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "step-000002 is damaged: dcp/__1_0.distcp does not match its checksum" in captured.err
    assert "resuming at step 1 from" in captured.out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["info"]["world_size"] == 1
    assert "format" not in json.loads((latest / "manifest.json").read_text())  # the single-process format

    # and that single-process checkpoint resumes under torchrun (split on load)
    proc = torchrun([str(SCRIPTS / "run_and_hash.py"), "--", *SMALL, "--steps", "6", "--out", str(out), "--resume"])
    assert "resuming at step 4" in proc.stdout
    assert len({p.read_text() for p in out.glob("params-rank*.sha256")}) == 1
    assert json.loads((latest / "manifest.json").read_text())["step"] == 6


@pytest.mark.parametrize("env, names", [
    ({"RANK": "0"}, ["WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     ["RANK=2", "WORLD_SIZE=2"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "29500"}, ["MASTER_ADDR"]),
    ({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"},
     ["WORLD_SIZE='two'"]),
])
def test_inconsistent_launcher_environment_is_one_line(env, names, tmp_path, monkeypatch, capsys):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"ia-train( \(rank \d+\))?: error: inconsistent torch.distributed environment",
                                      err[0]), err
    assert all(name in err[0] for name in names), err
    assert not (tmp_path / "run").exists()


def test_prompts_must_split_across_processes(tmp_path, monkeypatch, capsys):
    for name, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert main(["--prompts-per-step", "16", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompts-per-step 16 does not split across 3 processes" in err[0], err

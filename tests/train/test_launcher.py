"""torchrun, half-configured or with ranks that disagree: a clear one-line error within the
rendezvous timeout, never a silent wait for torch's 30 minutes or an abort inside gloo."""

import os
import socket
import subprocess
import sys
import time

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE")
SMALL = ["--prompts-per-step", "2", "--n", "4", "--k", "2", "--max-new-tokens", "8", "--eval-problems", "0",
         "--steps", "1", "--tensorboard", "false", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    return env


def test_a_missing_rank_is_reported_within_the_timeout(tmp_path):
    port = free_port()
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "ia_train", *SMALL, "--dist-timeout", "3", "--out",
                           str(tmp_path / "run")], env=rank_env(0, 2, port), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("ia-train")]
    assert len(err) == 1 and err[0].startswith(
        f"ia-train: error: torch.distributed: rank 0 of WORLD_SIZE=2 did not meet the other processes at "
        f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port} within 3 s"), err
    assert time.time() - t0 < 60


def test_ranks_with_different_settings_stop_before_training(tmp_path):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "ia_train", *SMALL, "--dist-timeout", "60", "--lr", lr,
                               "--out", str(tmp_path / "run")], env=rank_env(rank, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, lr in ((0, "0.001"), (1, "0.002"))]
    results = [p.communicate(timeout=180) for p in procs]
    for rank, (p, (_, err)) in enumerate(zip(procs, results)):
        lines = [line for line in err.splitlines() if line.startswith("ia-train")]
        assert p.returncode == 2, err
        where = "" if rank == 0 else " (rank 1)"
        assert lines == [f"ia-train{where}: error: the processes disagree on the setting lr: rank 0 has 0.001, "
                         "rank 1 has 0.002; start every rank with the same settings"], err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

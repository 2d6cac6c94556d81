"""Vocabulary-parallel linear_logprobs and linear_ppo_loss (tp_group=...) against the single-process
ops: two gloo processes, uneven blocks of the vocabulary (25 + 12 rows), every backend, ignored rows,
temperature, entropy, PPO options, GSPO, float64, a DTensor weight. Values and gradients must agree
to fp32 rounding relative to their scale (float64: 1e-12), and both ranks must get the same outputs."""

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed", "tp_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", WORKER, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_sharded_ops_equal_the_single_process_ops(results):
    for rank_results in results:
        for r in rank_results:
            if r["case"] == "bad-target":
                continue
            tol = 1e-12 if "float64" in r["case"] else 2e-5
            for key in ("outputs", "grad_hidden", "grad_weight", "grad_bias"):
                assert r[key] <= tol, (r["case"], key, r[key])


def test_every_rank_gets_the_same_outputs(results):
    a = {r["case"]: r.get("values") for r in results[0]}
    b = {r["case"]: r.get("values") for r in results[1]}
    assert a == b


def test_a_bad_global_target_is_refused_on_every_rank(results):
    for rank_results in results:
        (bad,) = [r for r in rank_results if r["case"] == "bad-target"]
        assert bad["message"] and "targets must lie in [0, 37)" in bad["message"], bad

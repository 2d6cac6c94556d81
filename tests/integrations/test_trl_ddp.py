"""IAGRPOTrainer against TRL's GRPOTrainer under DDP: two CPU processes (torchrun, gloo; the worker is
tests/integrations/distributed/trl_ddp_worker.py). Completions of different lengths, so the ranks hold
different token counts (a mean of per-rank means is not the global token mean), and a prompt group
split across the ranks. One step and off-policy steps (num_iterations=2, steps_per_generation=2):
the weights equal TRL's, every rank holds the same weights, and the dashboard (every metric TRL logs)
reads TRL's values."""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

WORKER = os.path.join(os.path.dirname(__file__), "distributed", "trl_ddp_worker.py")
SKIP = ("loss", "grad_norm", "learning_rate", "epoch", "step_time")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", WORKER, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


CASES = ["on-policy, KL", "num_iterations 2, steps_per_generation 2"]


@pytest.mark.parametrize("case", CASES)
def test_ddp_step_equals_trl_and_ranks_agree(ranks, case):
    (r0, r1) = (ranks[0][case], ranks[1][case])
    print(f"{case}: max |weight change| {r0['moved']:.3g}, max |difference to TRL| {r0['diff']:.3g}")
    assert not r0["warnings"] and not r1["warnings"]
    assert r0["moved"] > 1e-3 and r0["diff"] <= 2e-6 * max(1.0, r0["moved"])
    assert r0["checksum"] == r1["checksum"]


@pytest.mark.parametrize("case", CASES)
def test_ddp_dashboard_equals_trl(ranks, case):
    for rank in ranks:
        trl, ia = rank[case]["trl"], rank[case]["ia"]
        assert len(trl) == len(ia)
        lengths = {(h["completions/min_length"], h["completions/max_length"]) for h in trl if "completions/min_length" in h}
        assert all(lo < hi for lo, hi in lengths)  # uneven lengths: the token means are global ones
        for want, have in zip(trl, ia):
            assert not sorted(set(want) - set(have))
            for key, value in want.items():
                if key in SKIP or not isinstance(value, float):
                    continue
                ok = math.isclose(have[key], value, rel_tol=1e-4, abs_tol=1e-6) or (math.isnan(value)
                                                                                      and math.isnan(have[key]))
                assert ok, (key, have[key], value)

"""Vocabulary-parallel calls whose ranks disagree, or whose arguments one rank refuses, raise the same
ValueError on every rank, naming the argument (and both ranks' values where they differ), instead of
aborting inside gloo or hanging until the collective times out. Two gloo processes run
tests/distributed/tp_disagree_worker.py, each case on both ranks."""

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed", "tp_disagree_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp_agree")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("IA_KERNELS_CHUNK_BYTES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", WORKER, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


# case -> (what both ranks' messages must contain, what rank 0's must contain, rank 1's)
DISAGREEMENTS = {
    "unequal-H": ("disagree on H, hidden's last dimension", "rank 0 has 16, rank 1 has 8"),
    "unequal-chunk_size": ("disagree on chunk_size", "rank 0 has 7, rank 1 has 5"),
    "unequal-tokens": ("disagree on the number of tokens", "rank 0 has 36, rank 1 has 32"),
    "unequal-temperature": ("disagree on temperature", "rank 0 has 1.0, rank 1 has 0.7"),
    "unequal-requires_grad": ("disagree on whether hidden's gradient is wanted", "rank 0 has True, rank 1 has False"),
    "unequal-chunk-bytes": ("disagree on IA_KERNELS_CHUNK_BYTES", "rank 0 has 4096, rank 1 has 8192"),
    "different-ops": ("disagree on the op", "rank 0 has linear_logprobs, rank 1 has linear_ppo_loss"),
    "ppo-unequal-valid-tokens": ("disagree on the number of valid tokens", "rank 0 has 36, rank 1 has"),
    "ppo-unequal-importance": ("disagree on importance", "rank 0 has 'token', rank 1 has 'sequence'"),
    "unequal-targets": ("disagree on the targets (a checksum", "each rank must pass the same batch"),
    "ppo-unequal-mask-same-count": ("disagree on the targets (a checksum",),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_disagreeing_ranks_both_raise_naming_the_argument(results, case):
    for rank in range(2):
        got = results[rank][case]
        assert got["type"] == "ValueError", (rank, got)
        for part in DISAGREEMENTS[case]:
            assert part in got["message"], (rank, got["message"])


def test_one_rank_refused_arguments_refuse_the_call_on_every_rank(results):
    own, other = results[1]["one-rank-refused"], results[0]["one-rank-refused"]
    assert own["type"] == other["type"] == "ValueError"
    assert own["message"].startswith("temperature must be finite and > 0, got -1.0"), own
    assert other["message"].startswith("rank 1 of tp_group refused the call: temperature must be finite"), other


def test_a_target_outside_the_vocabulary_on_one_rank_is_refused_on_every_rank(results):
    for rank in range(2):
        got = results[rank]["one-rank-bad-target"]
        assert got["type"] == "ValueError" and "targets must lie in [0, 37)" in got["message"], (rank, got)
    assert "on rank 1 of tp_group" in results[0]["one-rank-bad-target"]["message"]


def test_value_checks_of_one_rank_refuse_the_call_on_every_rank(results):
    nan = results[1]["ppo-one-rank-nan-advantages"]
    assert nan["type"] == "ValueError" and "advantages must be finite on valid tokens" in nan["message"], nan
    other = results[0]["ppo-one-rank-nan-advantages"]
    assert other["message"] == "rank 1 of tp_group refused the call: NaN or inf advantages on valid tokens", other
    norm = results[1]["ppo-one-rank-bad-num_tokens"]
    assert norm["type"] == "ValueError" and "num_tokens must be finite and > 0, got -36.0" in norm["message"], norm
    assert "rank 1 of tp_group refused the call: a tensor num_tokens" in results[0]["ppo-one-rank-bad-num_tokens"][
        "message"]
    iw = results[1]["ppo-one-rank-negative-importance-weights"]
    assert iw["type"] == "ValueError" and "importance_weights must be finite and >= 0" in iw["message"], iw
    assert results[0]["ppo-one-rank-negative-importance-weights"]["message"] == (
        "rank 1 of tp_group refused the call: importance_weights negative or not finite on valid tokens")


def test_tp_group_and_dtensor_hidden_errors_name_the_argument(results):
    for rank in range(2):
        bad_group = results[rank]["tp_group-string"]
        assert bad_group["type"] == "ValueError", bad_group
        assert bad_group["message"].startswith("tp_group must be a torch.distributed ProcessGroup or None, got str"), \
            bad_group
        dt = results[rank]["dtensor-hidden"]
        assert dt["type"] == "ValueError" and dt["message"].startswith("hidden is a DTensor"), dt


def test_the_group_still_works_after_the_refusals(results):
    for rank in range(2):
        assert results[rank]["still-works"]["type"] is None
        assert results[rank]["still-works"]["message"] < 1e-5

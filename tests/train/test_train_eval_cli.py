"""`ia-train eval`: pass@k / maj@k of a model without training, and its configuration errors."""

import json

import pytest

from ia_train.cli import main


def test_eval_reports_every_k_consistently(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--eval-problems", "12", "--n", "4", "--k", "1,2,4", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["n"] == 4 and res["ks"] == [1, 2, 4] and res["problems"] == 12
    # pass@k grows with k; maj@1 is pass@1 (one vote); every value is a probability inside its interval.
    assert res["pass@1"] <= res["pass@2"] <= res["pass@4"]
    assert res["maj@1"] == pytest.approx(res["pass@1"])
    for name in ("pass@1", "pass@2", "pass@4", "maj@2", "maj@4"):
        lo, hi = res[name + "_ci"]
        assert 0.0 <= lo <= res[name] <= hi <= 1.0
    # pass@1 is the plain mean correctness of all samples: recompute it from the saved samples.
    samples = json.loads((out / "samples_eval.json").read_text())
    scores = [s for p in samples for s in p["scores"]]
    assert len(scores) == 12 * 4
    assert res["pass@1"] == pytest.approx(sum(v >= 0.5 for v in scores) / len(scores))
    # pass@4 from 4 samples: the fraction of problems with at least one correct sample.
    assert res["pass@4"] == pytest.approx(sum(any(v >= 0.5 for v in p["scores"]) for p in samples) / 12)
    # the default task's problems have classes: every k's values per class too
    assert sorted(res["per_class"]) == ["pick", "t2", "t3", "t4", "t5"]
    assert sum(v["problems"] for v in res["per_class"].values()) == 12
    assert all({"pass@1", "pass@4", "maj@4", "mean_tokens"} <= set(v) for v in res["per_class"].values())
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "per class" in printed


@pytest.mark.parametrize("args, message", [
    (["--n", "4", "--k", "1,8"], "--k 8 is larger than --n 4"),
    (["--k", "one"], "give comma-separated integers"),
    (["--k", "0,2"], "every k must be at least 1"),
    (["--task", "no_such_task"], "no_such_task"),
    (["--n", "four"], "argument --n: invalid int value: 'four'"),
    (["--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["--seed", "-3"], "--seed must be in [0, 4294967295], got -3"),
    (["--eval-problems", "0"], "--eval-problems must be at least 1 for an evaluation"),
    (["--lr", "0.1"], "--lr: training setting that ia-train eval does not use; drop it"),
    (["--objective", "rloo", "--steps", "3"], "--objective, --steps: training settings that ia-train eval does "
                                              "not use; drop them"),
    (["--eval-n", "4"], "--eval-n: training setting that ia-train eval does not use (use --n for the samples "
                        "per problem)"),
    (["--resume"], "--resume: training setting that ia-train eval does not use"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--n", str(10**20), "--k", str(10**20)], f"--n {10**20} is more than ia-train eval accepts (at most 65536)"),
    (["--max-new-tokens", "5000"], "--max-new-tokens 5000 does not fit --model tiny: its context is 256 tokens"),
    (["--rollout", "vllm"], "--rollout 'vllm' is unknown; use builtin or hf"),
])
def test_eval_configuration_errors(args, message, tmp_path, capsys):
    """Only the settings an evaluation uses are checked, each by its own subsystem: no training
    settings are made up to get through the training checks."""
    assert main(["eval", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ia-train eval: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()

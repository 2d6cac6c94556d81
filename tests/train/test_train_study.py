"""`ia-train study`: the grid it runs, the aggregation over seeds, its outputs, failures and resuming."""

import json
import random

import numpy as np
import pytest

from ia_train.cli import main as cli_main
from ia_train.evaluation.metrics import change, summarize
from ia_train.study import (ALPHAS, LENGTH_RECIPE, MODES, RunSpec, aggregate, grid, plot_length, plot_objectives,
                            run_grid, table, two_level_interval)


def test_the_full_grid_covers_both_papers():
    specs = grid(MODES["full"], [0, 1, 2])
    assert len({s.name for s in specs}) == len(specs) == 3 * (4 + len(ALPHAS))
    objectives = [s.config for s in specs if s.grid == "objectives"]
    assert sorted({c["objective"] for c in objectives}) == ["grpo", "majority", "passk", "rloo"]
    for c in objectives:  # the same samples per step for every objective; majority votes over all n = k
        assert c.get("prompts_per_step", 16) * c["n"] == 128
        assert c["k"] == 4 and (c["n"] == 4 if c["objective"] == "majority" else c["n"] == 8)
    length = [s.config for s in specs if s.grid == "length"]
    assert sorted({c["alpha"] for c in length}) == sorted(ALPHAS) == [0.0, 0.05, 0.1, 0.2, 0.4]
    assert all(all(c[k] == v for k, v in LENGTH_RECIPE.items()) for c in length)
    assert all(c["eval_n"] == 16 and c["steps"] == MODES["full"]["steps"] for c in objectives + length)
    quick = grid(MODES["quick"], [0])
    assert sorted(s.config["alpha"] for s in quick if s.grid == "length") == [0.0, 0.4]


def test_two_level_interval():
    # one seed of identical problems: no uncertainty at all
    assert two_level_interval([np.full(5, 0.3)]) == pytest.approx((0.3, 0.3))
    # seeds that differ but whose problems agree: the interval spans the seed means' resampled averages
    lo, hi = two_level_interval([np.full(4, 0.2), np.full(4, 0.4), np.full(4, 0.6)])
    assert 0.2 <= lo < 0.4 < hi <= 0.6
    # more problems per seed -> a narrower interval
    rng = np.random.default_rng(0)
    wide = two_level_interval([rng.random(10) for _ in range(3)])
    narrow = two_level_interval([rng.random(1000) for _ in range(3)])
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def fake_summary(spec: RunSpec, p_before: float, p_after: float, tokens: float, problems: int = 30) -> dict:
    """A run's summary.json made with the real evaluation code from random samples."""
    rng = random.Random(hash(spec.name) % 1000)
    n = spec.config["eval_n"]

    def evaluation(p):
        correct = [[rng.random() < p for _ in range(n)] for _ in range(problems)]
        answers = [[1 if c else rng.choice([2, 3]) for c in row] for row in correct]
        lengths = [[tokens + rng.choice([-2, 0, 2]) for _ in range(n)] for _ in range(problems)]
        return summarize(correct, answers, lengths, spec.config["k"])

    before, after = evaluation(p_before), evaluation(p_after)
    return {"config": spec.config, "before": before, "after": after, "change": change(before, after),
            "wall_seconds": 1.0, "train_seconds": 1.0}


def test_aggregate_table_and_figures(tmp_path):
    specs = grid({**MODES["quick"], "eval_n": 8}, [0, 1])
    summaries = {s.name: fake_summary(s, 0.3, 0.5 if s.grid == "objectives" else 0.4,
                                      60 - 50 * s.config.get("alpha", 0)) for s in specs}
    rows = aggregate(specs, summaries)
    assert [r["label"] for r in rows] == ["alpha=0", "alpha=0.4", "rloo", "grpo", "passk (k=4)", "majority (k=4)"]
    for r in rows:
        runs = [summaries[s.name] for s in specs if s.label == r["label"]]
        assert r["seeds"] == [0, 1]
        for j in (1, 2, 4, 8):
            for m in ("pass", "maj"):
                name = f"{m}@{j}"
                assert r["after"][name] == pytest.approx(np.mean([x["after"]["curve"][name] for x in runs]))
                assert r["change"][name] == pytest.approx(r["after"][name] - r["before"][name])
                lo, hi = r["change"][name + "_ci"]
                assert lo <= r["change"][name] <= hi
        assert r["after"]["mean_tokens"] == pytest.approx(np.mean([x["after"]["mean_tokens"] for x in runs]))
    text = table(rows)
    assert "| passk (k=4) |" in text and "| 0.4 |" in text and "pass@8" in text
    assert plot_objectives(rows, tmp_path / "o.png").stat().st_size > 10_000
    assert plot_length(rows, tmp_path / "l.png").stat().st_size > 10_000


def test_a_failing_run_is_reported_with_its_error(tmp_path):
    bad = RunSpec("bad", "length", "alpha=2", (("alpha", 2.0), ("eval_n", 8), ("steps", 1)))
    summaries, failures = run_grid([bad], tmp_path, jobs=1, threads=1, extra=[], say=lambda line: None)
    assert summaries == {}
    assert "exit status 2" in failures["bad"] and "--alpha must be in [0, 1], got 2.0" in failures["bad"]


def test_study_options_are_checked(capsys):
    assert cli_main(["study", "--eval-n", "4"]) == 2
    assert "ia-train study: error: --eval-n 4: the curves go to k = 8, so it must be at least 8" in capsys.readouterr().err
    assert cli_main(["study", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert cli_main(["study", "--seeds", "1000000000"]) == 2
    assert "--seeds 1000000000 is more than ia-train study accepts (at most 1000)" in capsys.readouterr().err
    assert cli_main(["study", "--steps", str(10**12)]) == 2
    assert "is more than ia-train study accepts" in capsys.readouterr().err


def test_a_small_study_end_to_end_and_resumed(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--quick", "--grid", "length", "--steps", "1", "--eval-problems", "3", "--jobs", "2",
            "--out", str(out)]
    assert cli_main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["failed"] == {} and len(study["runs"]) == 2
    assert [r["alpha"] for r in study["runs"]] == [0.0, 0.4]
    for r in study["runs"]:
        assert r["steps"] == 1 and r["after"]["problems"] == 3 and set(r["after"]["curve"]["ks"]) == {1, 2, 4, 8}
        assert (r["kl_reward_coef"], r["aggregation"]) == (0.001, "seq-mean-token-mean")
    assert [a["label"] for a in study["aggregates"]] == ["alpha=0", "alpha=0.4"]
    assert (out / "length.png").is_file() and "| alpha |" in (out / "study.md").read_text()
    # Run again: the finished runs are kept, not trained again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert cli_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == stamps

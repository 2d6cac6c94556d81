"""`ia-train study`: the grid it runs, the aggregation over seeds (t intervals, paired differences, per
class), its outputs, --report-only, failures and resuming."""

import json
import random

import numpy as np
import pytest

from ia_train.cli import main as cli_main
from ia_train.evaluation.metrics import change, summarize, t_interval
from ia_train.study import (ALPHAS, CHECKPOINT_EVERY, LENGTH_RECIPE, MODES, RunSpec, aggregate, grid, plot_length,
                            plot_objectives, run_grid, run_record, table)
from ia_train.study.cli import write_report

CLASSES = ["t2", "t3", "pick"]


def test_the_full_grid_covers_both_papers():
    specs = grid(MODES["full"])
    assert len({s.name for s in specs}) == len(specs) == 5 * 4 + 3 * len(ALPHAS) + 3
    objectives = [s.config for s in specs if s.grid == "objectives"]
    assert sorted({c["objective"] for c in objectives}) == ["grpo", "majority", "passk", "rloo"]
    assert sorted({c["seed"] for c in objectives}) == [0, 1, 2, 3, 4]
    for c in objectives:  # the same samples per step for every objective; majority votes over all n = k
        assert c.get("prompts_per_step", 16) * c["n"] == 128
        assert c["k"] == 4 and (c["n"] == 4 if c["objective"] == "majority" else c["n"] == 8)
    length = [s.config for s in specs if s.grid == "length"]
    assert sorted({c["alpha"] for c in length}) == sorted(ALPHAS) == [0.0, 0.05, 0.1, 0.2, 0.4]
    assert sorted({c["seed"] for c in length}) == [0, 1, 2]
    assert all(all(c[k] == v for k, v in LENGTH_RECIPE.items()) for c in length)
    assert all(c["whiten_advantages"] is True for c in length)
    assert not any(c.get("whiten_advantages") for c in objectives)
    for c in objectives + length:
        assert (c["eval_n"], c["steps"], c["eval_problems"]) == (32, 300, 200)
        assert c["checkpoint_every"] == CHECKPOINT_EVERY and c["rollout"] == "builtin"
    # the whitening ablation: for each of the length grid's seeds, its alpha = 0.1 run with the whitening
    # alone turned off (the pairing compares the two), right after that seed's length grid
    ablation = [s for s in specs if s.grid == "whitening"]
    assert [s.name for s in ablation] == [f"length-alpha0.1-unwhitened-seed{i}" for i in range(3)]
    for s in ablation:
        assert specs[specs.index(s) - 1].name == f"length-alpha0.4-seed{s.config['seed']}"
        twin = next(t for t in specs if t.name == f"length-alpha0.1-seed{s.config['seed']}")
        assert {k: v for k, v in s.config.items() if s.config[k] != twin.config[k]} == {"whiten_advantages": False}
    assert grid({**MODES["full"], "whitening_ablation": False}) == [s for s in specs if s.grid != "whitening"]
    quick = grid(MODES["quick"])
    assert sorted(s.config["alpha"] for s in quick if s.grid == "length") == [0.0, 0.4]
    assert {s.config["seed"] for s in quick} == {0} and not any(s.grid == "whitening" for s in quick)
    with pytest.raises(ValueError, match="paired with the length grid's alpha = 0.1, which this grid lacks"):
        grid({**MODES["quick"], "whitening_ablation": True})


def fake_summary(spec: RunSpec, p_before: float, p_after: float, tokens: float, problems: int = 30) -> dict:
    """A run's summary.json made with the real evaluation code from random samples, with classes."""
    rng = random.Random(hash(spec.name) % 1000)
    n = spec.config["eval_n"]
    classes = [CLASSES[i % len(CLASSES)] for i in range(problems)]

    def evaluation(p):
        correct = [[rng.random() < p for _ in range(n)] for _ in range(problems)]
        answers = [[1 if c else rng.choice([2, 3, None]) for c in row] for row in correct]
        lengths = [[tokens + rng.choice([-2, 0, 2]) for _ in range(n)] for _ in range(problems)]
        return summarize(correct, answers, lengths, spec.config["k"], classes=classes)

    before, after = evaluation(p_before), evaluation(p_after)
    return {"config": spec.config, "before": before, "after": after, "change": change(before, after),
            "wall_seconds": 3.0, "train_seconds": 2.0}


def study_records(seeds=(0, 1, 2)):
    mode = {**MODES["quick"], "eval_n": 8, "objective_seeds": len(seeds), "length_seeds": len(seeds)}
    specs = grid(mode)
    summaries = {s.name: fake_summary(s, 0.3, 0.5 if s.grid == "objectives" else 0.4,
                                      60 - 50 * s.config.get("alpha", 0)) for s in specs}
    return specs, summaries, [run_record(s, summaries[s.name]) for s in specs]


def clipped_t(values, lo=0.0, hi=1.0):
    """The t interval of values within [lo, hi] (a rate's range by default)."""
    a, b = t_interval(values)
    return [max(a, lo), min(b, hi)]


def test_intervals_are_t_intervals_over_the_seed_values():
    specs, summaries, records = study_records()
    agg = aggregate(records)
    rows = agg["settings"]
    assert [r["label"] for r in rows] == ["alpha=0", "alpha=0.4", "rloo", "grpo", "passk (k=4)", "majority (k=4)"]
    for r in rows:
        runs = [summaries[s.name] for s in specs if s.label == r["label"]]
        assert r["seeds"] == [0, 1, 2] and r["interval"] == "t over seeds, clipped to the metric's range"
        for j in (1, 2, 4, 8):
            for m in ("pass", "maj"):
                name = f"{m}@{j}"
                per_seed = [x["after"]["curve"][name] for x in runs]
                assert r["after"][name] == pytest.approx(np.mean(per_seed))
                assert r["after"][name + "_ci"] == pytest.approx(clipped_t(per_seed))
                assert r["change"][name] == pytest.approx(r["after"][name] - r["before"][name])
        # per class: the mean over seeds of each seed's class mean, with its own t interval
        for c in CLASSES:
            per_seed = [x["after"]["per_class"][c]["pass@1"] for x in runs]
            cell = r["per_class"]["after"][c]
            assert cell["pass@1"] == pytest.approx(np.mean(per_seed))
            assert cell["pass@1_ci"] == pytest.approx(clipped_t(per_seed))
            assert cell["problems"] == 10


def test_three_seeds_give_the_t_interval_a_bootstrap_would_narrow():
    """The issue's numbers: rloo's pass@1 change 0.216 / 0.286 / 0.321 over 3 seeds. The two-level
    bootstrap reported [0.216, 0.326]; over the seed means a t interval is [0.142, 0.407]."""
    _, _, records = study_records()
    rloo = [r for r in records if r["label"] == "rloo"]
    for r, value in zip(rloo, (0.216, 0.286, 0.321)):
        r["change"]["pass@1"] = value
    row = next(r for r in aggregate(records)["settings"] if r["label"] == "rloo")
    assert row["change"]["pass@1"] == pytest.approx(0.2743, abs=1e-4)
    assert row["change"]["pass@1_ci"] == pytest.approx([0.142, 0.407], abs=1e-3)


def test_intervals_past_a_metrics_range_are_clipped_to_it():
    """Pick pass@32 of 0.575 / 0.875 / 0.925 over 3 seeds: the t interval [0.321, 1.262] ends at 1;
    a rate's paired difference ends at -1; mean tokens' interval at 0, their difference unbounded."""
    _, _, records = study_records()
    rloo = [r for r in records if r["label"] == "rloo"]
    passk = [r for r in records if r["label"] == "passk (k=4)"]
    for r, value in zip(rloo, (0.575, 0.875, 0.925)):
        r["after"]["pass@8"] = value
        r["per_class"]["after"]["pick"]["pass@8"] = value
    for r, p, value, tokens in zip(rloo, passk, (0.0, 0.875, 0.1), (2.0, 30.0, 40.0)):
        p["after"]["pass@8"] = value  # differences -0.575, 0, -0.825: a t interval past -1
        r["after"]["mean_tokens"], p["after"]["mean_tokens"] = tokens, tokens + 1.0
    passk[1]["after"]["mean_tokens"] = 100.0  # token differences +1, +70, +1: a wide interval both ways
    agg = aggregate(records)
    row = next(r for r in agg["settings"] if r["label"] == "rloo")
    lo, hi = t_interval([0.575, 0.875, 0.925])
    assert (lo, hi) == pytest.approx((0.321, 1.262), abs=1e-3)
    assert row["after"]["pass@8_ci"] == pytest.approx([lo, 1.0])
    assert row["per_class"]["after"]["pick"]["pass@8_ci"] == pytest.approx([lo, 1.0])
    tokens_lo = t_interval([2.0, 30.0, 40.0])[0]
    assert tokens_lo < 0 and row["after"]["mean_tokens_ci"][0] == 0.0
    paired = next(p for p in agg["paired"] if p["label"] == "passk (k=4)")
    diffs = [0.0 - 0.575, 0.875 - 0.875, 0.1 - 0.925]
    assert paired["after"]["pass@8"] == pytest.approx(np.mean(diffs))
    assert paired["after"]["pass@8_ci"] == pytest.approx([-1.0, t_interval(diffs)[1]]) and t_interval(diffs)[0] < -1
    token_ci = t_interval([1.0, 70.0, 1.0])
    assert token_ci[0] < 0 and paired["after"]["mean_tokens_ci"] == pytest.approx(list(token_ci))


def test_paired_differences_are_taken_seed_by_seed():
    specs, summaries, records = study_records()
    paired = aggregate(records)["paired"]
    assert [(p["grid"], p["label"], p["baseline"]) for p in paired] == [
        ("length", "alpha=0.4", "alpha=0"), ("objectives", "grpo", "rloo"), ("objectives", "passk (k=4)", "rloo"),
        ("objectives", "majority (k=4)", "rloo")]
    passk = next(p for p in paired if p["label"] == "passk (k=4)")
    by = {(s.label, s.config["seed"]): summaries[s.name] for s in specs}
    for name in ("pass@1", "pass@8", "maj@4"):
        diffs = [by[("passk (k=4)", s)]["after"]["curve"][name] - by[("rloo", s)]["after"]["curve"][name]
                 for s in (0, 1, 2)]
        assert passk["after"][name] == pytest.approx(np.mean(diffs))
        assert passk["after"][name + "_ci"] == pytest.approx(clipped_t(diffs, -1.0))
    diffs = [by[("passk (k=4)", s)]["after"]["per_class"]["pick"]["pass@4"]
             - by[("rloo", s)]["after"]["per_class"]["pick"]["pass@4"] for s in (0, 1, 2)]
    assert passk["per_class"]["pick"]["pass@4"] == pytest.approx(np.mean(diffs))
    # a seed that only one side ran is left out of the pairing
    fewer = [r for r in records if not (r["label"] == "rloo" and r["seed"] == 2)]
    assert next(p for p in aggregate(fewer)["paired"] if p["label"] == "grpo")["seeds"] == [0, 1]


def test_the_whitening_ablation_is_paired_with_its_whitened_twin(tmp_path):
    mode = {**MODES["quick"], "eval_n": 8, "objective_seeds": 3, "length_seeds": 3, "alphas": (0.0, 0.1),
            "whitening_ablation": True}
    specs = grid(mode)
    # unwhitened runs longer than their twins, on every seed
    summaries = {s.name: fake_summary(s, 0.3, 0.45 if s.grid == "whitening" else 0.4,
                                      90 if s.grid == "whitening" else 60 - 50 * s.config.get("alpha", 0))
                 for s in specs}
    records = [run_record(s, summaries[s.name]) for s in specs]
    agg = aggregate(records)
    row = next(p for p in agg["paired"] if p["grid"] == "whitening")
    assert (row["label"], row["baseline"], row["seeds"]) == ("alpha=0.1 unwhitened", "alpha=0.1", [0, 1, 2])
    after = lambda name, metric: (summaries[name]["after"]["curve"][metric] if "@" in metric
                                  else summaries[name]["after"][metric])
    for name in ("pass@1", "pass@8", "mean_tokens"):
        diffs = [after(f"length-alpha0.1-unwhitened-seed{i}", name) - after(f"length-alpha0.1-seed{i}", name)
                 for i in range(3)]
        assert row["after"][name] == pytest.approx(np.mean(diffs))
        assert row["after"][name + "_ci"] == pytest.approx(list(t_interval(diffs)))
    assert row["after"]["mean_tokens"] > 20
    # the length grid's own pairing (against alpha = 0) does not take the ablation in
    assert [p["label"] for p in agg["paired"] if p["grid"] == "length"] == ["alpha=0.1"]
    text = table(agg)
    section = text[text.index("## Whitening ablation (3 seed(s) per setting"):]
    whitened = next(r for r in agg["settings"] if r["label"] == "alpha=0.1")
    assert f"| whitened | {whitened['after']['pass@1']:.3f} [" in section
    assert f"| unwhitened − whitened | {row['after']['pass@1']:+.3f} [" in section
    assert f"| t2 | {whitened['per_class']['after']['t2']['mean_tokens']:.1f} [" in section
    assert plot_length(agg, tmp_path / "l.png").stat().st_size > 10_000
    # without its whitened twin (not finished yet) the ablation has no section
    alone = [r for r in records if r["label"] != "alpha=0.1"]
    assert "Whitening ablation" not in table(aggregate(alone))
    assert plot_length(aggregate(alone), tmp_path / "l2.png").is_file()


def test_one_seed_reports_the_runs_own_interval_over_problems():
    _, summaries, records = study_records(seeds=(0,))
    row = aggregate(records)["settings"][0]
    assert row["interval"] == "bootstrap over problems (one seed)"
    summary = summaries["length-alpha0-seed0"]
    assert row["after"]["pass@2_ci"] == summary["after"]["curve"]["pass@2_ci"]
    assert row["per_class"]["after"]["t2"]["pass@1_ci"] is None  # nothing to vary over


def test_table_figures_and_report_only_rebuild(tmp_path):
    _, _, records = study_records()
    agg = aggregate(records)
    text = table(agg)
    assert "| passk (k=4) |" in text and "| 0.4 |" in text and "pass@8" in text
    assert "| passk (k=4) − rloo |" in text and "Per problem class" in text and "| pick |" in text
    assert plot_objectives(agg, tmp_path / "o.png").stat().st_size > 10_000
    assert plot_length(agg, tmp_path / "l.png").stat().st_size > 10_000
    # --report-only: from study.json's runs alone
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"command": "ia-train study", "runs": records, "aggregates": {}}))
    assert cli_main(["study", "--report-only", "--out", str(out)]) == 0
    assert (out / "objectives.png").is_file() and (out / "length.png").is_file()
    assert text in (out / "study.md").read_text()
    assert json.loads((out / "study.json").read_text())["aggregates"] == json.loads(json.dumps(agg))


def test_a_failing_run_is_reported_with_its_error(tmp_path):
    bad = RunSpec("bad", "length", "alpha=2", (("alpha", 2.0), ("eval_n", 8), ("steps", 1)))
    worse = RunSpec("worse", "length", "alpha=3", (("alpha", 3.0), ("eval_n", 8), ("steps", 1)))
    seen = []
    summaries, failures = run_grid([bad, worse], tmp_path, jobs=1, threads=1, extra=[], say=lambda line: None,
                                   on_finished=lambda done, failed: seen.append((dict(done), sorted(failed))))
    assert summaries == {}
    assert "exit status 2" in failures["bad"] and "--alpha must be in [0, 1], got 2.0" in failures["bad"]
    assert "--alpha must be in [0, 1], got 3.0" in failures["worse"]
    # the study hears of each run as it ends, so that its report can follow
    assert seen == [({}, ["bad"]), ({}, ["bad", "worse"])]


def test_an_unfinished_study_says_so_in_its_report(tmp_path):
    _, _, records = study_records()
    length = [r for r in records if r["grid"] == "length"]
    study = {"command": "ia-train study", "runs": length, "aggregates": aggregate(length), "complete": False,
             "runs_planned": len(records), "runs_finished": len(length)}
    write_report(study, tmp_path)
    text = (tmp_path / "study.md").read_text()
    assert f"**Interim: {len(length)} of {len(records)} runs finished.**" in text
    assert "## Length penalty" in text and "## Objectives" not in text
    assert (tmp_path / "length.png").is_file() and not (tmp_path / "objectives.png").exists()
    write_report({**study, "runs": records, "aggregates": aggregate(records), "complete": True,
                  "runs_finished": len(records)}, tmp_path)
    assert "Interim" not in (tmp_path / "study.md").read_text()


def test_study_options_are_checked(capsys, tmp_path):
    assert cli_main(["study", "--eval-n", "4"]) == 2
    assert "ia-train study: error: --eval-n 4: the curves go to k = 8, so it must be at least 8" in capsys.readouterr().err
    assert cli_main(["study", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert cli_main(["study", "--seeds", "1000000000"]) == 2
    assert "--seeds 1000000000 is more than ia-train study accepts (at most 1000)" in capsys.readouterr().err
    assert cli_main(["study", "--length-seeds", "0"]) == 2
    assert "--length-seeds must be at least 1, got 0" in capsys.readouterr().err
    assert cli_main(["study", "--steps", str(10**12)]) == 2
    assert "is more than ia-train study accepts" in capsys.readouterr().err
    assert cli_main(["study", "--quick", "--whitening-ablation"]) == 2
    assert ("--whitening-ablation pairs its runs with the length grid's alpha = 0.1, which --quick does not run "
            "(alpha in {0, 0.4})") in capsys.readouterr().err
    assert cli_main(["study", "--quick", "--grid", "whitening"]) == 2
    assert "--grid whitening runs the whitening ablation, which --quick leaves out" in capsys.readouterr().err
    assert cli_main(["study", "--grid", "whitening", "--no-whitening-ablation"]) == 2
    assert "which --no-whitening-ablation turns off" in capsys.readouterr().err
    assert cli_main(["study", "--report-only", "--out", str(tmp_path)]) == 2
    assert f"--report-only: {tmp_path / 'study.json'} does not exist" in capsys.readouterr().err


def test_a_small_study_end_to_end_and_resumed(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--quick", "--grid", "length", "--steps", "1", "--eval-problems", "5", "--jobs", "2",
            "--out", str(out)]
    assert cli_main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["failed"] == {} and len(study["runs"]) == 2
    assert (study["complete"], study["runs_planned"], study["runs_finished"]) == (True, 2, 2)
    assert [r["alpha"] for r in study["runs"]] == [0.0, 0.4]
    for r in study["runs"]:
        assert r["steps"] == 1 and r["problems"] == 5 and {f"pass@{j}" for j in (1, 2, 4, 8)} <= set(r["after"])
        assert (r["kl_reward_coef"], r["aggregation"], r["whiten_advantages"]) == (0.001, "seq-mean-token-mean", True)
        assert set(r["per_class"]["after"]) == {"t2", "t3", "t4", "t5", "pick"}  # the bundled task's classes
    assert [a["label"] for a in study["aggregates"]["settings"]] == ["alpha=0", "alpha=0.4"]
    assert (out / "length.png").is_file() and "| alpha |" in (out / "study.md").read_text()
    assert study["full_study_estimate_seconds"] > 0
    # Run again: the finished runs are kept, not trained again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert cli_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == stamps
    # ... and do not count as newly ended runs (the report is written once, at the end, not per kept run)
    specs = [s for s in grid({**MODES["quick"], "steps": 1, "eval_problems": 5}) if s.grid == "length"]
    seen = []
    summaries, failures = run_grid(specs, out / "runs", 1, 1, [], say=lambda line: None,
                                   on_finished=lambda done, failed: seen.append(len(done)))
    assert len(summaries) == 2 and failures == {} and seen == []


def test_the_committed_report_is_what_its_study_json_gives():
    """results/study's tables are regenerated from its study.json, not edited by hand (the first
    edition's, in results/study-first-edition, came from the previous aggregation and stay as written)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "results" / "study"
    study = json.loads((root / "study.json").read_text())
    assert json.loads(json.dumps(aggregate(study["runs"]))) == study["aggregates"]
    committed = (root / "study.md").read_text()
    assert committed[committed.index("## "):] == table(study["aggregates"])
    assert ("**Interim:" in committed) == (study.get("complete") is False)
    assert study["runs_finished"] == len(study["runs"]) and not study["failed"]

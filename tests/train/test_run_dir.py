"""A run's output directory belongs to one run: a new run refuses (or, with --overwrite, clears) a
directory that holds another run, and a checkpoint never continues a run it does not belong to."""

import json
import shutil

from ia_train.cli import main
from ia_train.runtime import checkpoint

FLAGS = ["--objective", "grpo", "--prompts-per-step", "2", "--n", "4", "--k", "2", "--max-new-tokens", "12",
         "--eval-problems", "0", "--minibatches", "1", "--tensorboard", "false", "--checkpoint-every", "1"]


def ia_train(out, *args, capsys):
    code = main([*FLAGS, "--out", str(out), *args])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("ia-train")]


def test_a_new_run_refuses_an_out_that_holds_another_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert ia_train(out, "--steps", "1", "--seed", "1", capsys=capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, err = ia_train(out, "--steps", "1", "--seed", "2", capsys=capsys)
    assert code == 2 and err == [f"ia-train: error: --out {out} holds another run (config.json, metrics.jsonl, "
                                 "checkpoints, ...); continue it with --resume, give another --out, or add "
                                 "--overwrite to delete that run's files and start over"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


def test_overwrite_deletes_the_other_run_and_only_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert ia_train(out, "--steps", "2", "--seed", "1", capsys=capsys)[0] == 0
    first = json.loads((out / "config.json").read_text())["run_id"]
    (out / "notes.txt").write_text("mine")
    assert ia_train(out, "--steps", "1", "--seed", "2", "--overwrite", capsys=capsys)[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 2 and config["run_id"] != first
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000001"]  # step 2 is gone
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_and_resume_together_are_refused(tmp_path, capsys):
    code, err = ia_train(tmp_path / "run", "--resume", "--overwrite", capsys=capsys)
    assert code == 2 and err == ["ia-train: error: --overwrite deletes the run that --resume would continue; "
                                 "give one of them"]


def test_a_checkpoint_of_another_run_never_continues_this_one(tmp_path, capsys):
    """The failure this prevents: run B, started where run A had left checkpoints and stopped before its
    own first one, resumed from A's weights (another seed, another objective) under B's settings."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert ia_train(a, "--steps", "2", "--seed", "1", capsys=capsys)[0] == 0
    assert ia_train(b, "--steps", "3", "--seed", "2", "--stop-after", "1", "--checkpoint-every", "0",
                    capsys=capsys)[0] == 0
    assert not (b / "checkpoints").exists()
    shutil.copytree(a / "checkpoints", b / "checkpoints", symlinks=True)
    code, err = ia_train(b, "--steps", "3", "--seed", "2", "--resume", capsys=capsys)
    run_a = json.loads((a / "config.json").read_text())["run_id"]
    run_b = json.loads((b / "config.json").read_text())["run_id"]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"ia-train: error: --resume: no usable checkpoint in {b / 'checkpoints'} "
                             f"(step-000002: it belongs to another run (run id {run_a}, this run's is {run_b})")
    # its own checkpoints still resume
    assert checkpoint.usable(a / "checkpoints", run_a)[0].name == "step-000002"
    assert checkpoint.usable(a / "checkpoints", run_b)[0] is None

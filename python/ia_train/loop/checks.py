"""Everything a training run is checked for before it touches a model, data or its output directory:
the settings' values and relations (config.py), then each subsystem's own part: the device and the
attention kernel, the kernels' backend, the output directory and, with --resume, its checkpoint, the
task, the model and the launcher's processes."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config, check_training, load_config
from ..errors import ConfigError
from ..models import check_model_source, check_response_length
from ..models.attention import choose_attention
from ..runtime import checkpoint, distributed, rundir
from ..runtime.files import check_output_dir
from ..tasks import check_task

# the ops that the loop calls with backend=cfg.backend
BACKEND_OPS = ("linear_logprobs", "linear_ppo_loss")


def validate(cfg: Config) -> None:
    """ConfigError (one line) for the first problem with a training run's settings."""
    check_training(cfg)
    distributed.check_device(cfg.device)
    device = distributed.pick_device(cfg.device)
    try:
        choose_attention(cfg.attention, device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_backend(cfg.backend, device)
    check_output_dir(cfg.out)
    out = Path(cfg.out)
    if cfg.resume:
        check_resume(cfg, out)
    elif not cfg.overwrite:
        check_fresh(out)
    check_task(cfg.task, cfg.task_options)
    check_model_source(cfg.model)
    check_response_length(cfg.model, cfg.max_new_tokens)
    distributed.check(cfg)


def training_config(argv: list[str] | None = None) -> Config:
    """The training command's settings (config.load_config), checked (validate)."""
    cfg = load_config(argv)
    validate(cfg)
    return cfg


def check_backend(backend: str | None, device) -> None:
    """ConfigError when --backend (or IA_KERNELS_BACKEND) cannot run the loss ops on `device`."""
    import ia_kernels
    from ia_kernels.backends import BACKEND_NAMES, ENV_VAR

    source, name = ("--backend", backend) if backend is not None else (ENV_VAR, os.environ.get(ENV_VAR) or None)
    if name is None:
        return
    if name not in BACKEND_NAMES:
        raise ConfigError(f"{source} {name!r} is not a backend; use one of {', '.join(BACKEND_NAMES)}")
    for op in BACKEND_OPS:
        reasons = ia_kernels.available_backends(op, device)[op]
        if name not in reasons:
            if source == ENV_VAR:
                continue  # the environment variable applies only to the ops that have that backend
            raise ConfigError(f"--backend {name}: {op} has no {name} backend (it has {', '.join(reasons)}); "
                              "choose another or leave --backend unset")
        why = reasons[name]
        if why is not None and not why.startswith("not chosen automatically"):
            usable_here = [b for b, w in reasons.items() if w is None or w.startswith("not chosen automatically")]
            raise ConfigError(f"{source} {name} cannot run on {device.type}: {why}; "
                              f"available here: {', '.join(usable_here)} (or leave it unset)")


def check_resume(cfg: Config, out: Path) -> None:
    """ConfigError unless `out` holds a run to resume: a usable checkpoint, its settings, and no more
    steps done than --steps."""
    folder, damaged = checkpoint.usable(out / "checkpoints", rundir.saved_run_id(out))
    if folder is None:
        why = f"no usable checkpoint in {out / 'checkpoints'} ({'; '.join(damaged)})" if damaged \
            else f"no checkpoint in {out / 'checkpoints'}"
        raise ConfigError(f"--resume: {why}; "
                          "drop --resume to start over, or point --out at the killed run")
    if not (out / "config.json").is_file():
        raise ConfigError(f"--resume: {out / 'config.json'} is missing, so the run's settings are unknown; "
                          "restore it or start a new run with another --out")
    step = checkpoint.step_of(folder)
    if cfg.steps < step:
        raise ConfigError(f"--steps {cfg.steps} is below the checkpoint's step {step} ({folder}); "
                          f"give --steps {step} or more")


def check_fresh(out: Path) -> None:
    """ConfigError when a new run's `out` holds another run's files: its checkpoints, resumed later,
    would continue the other run, and its log would mix both."""
    held = rundir.run_files(out)
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ConfigError(f"--out {out} holds another run ({shown}); continue it with --resume, give another --out, "
                          "or add --overwrite to delete that run's files and start over")

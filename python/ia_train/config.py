"""The run configuration: defaults, YAML file, command-line overrides, and validation.

Precedence: the dataclass defaults < the YAML file (`--config`) < command-line flags. Validation
happens before any model, data or output directory is touched, and every problem is reported as one
`ConfigError` line that says what to change (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

OBJECTIVES = ("rloo", "grpo", "dr_grpo", "passk", "passk_chen", "majority")


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the setting and what to change."""


@dataclass
class Config:
    # what to train
    model: str = field(default="tiny", metadata={"help": "'tiny' (the bundled model), 'smollm2', or a local Hugging Face model directory"})
    task: str = field(default="chain_sum", metadata={"help": "a reasoning-gym task name (e.g. chain_sum, basic_arithmetic), or math500 / aime24 / aime25 / humaneval"})
    task_options: dict = field(default_factory=dict, metadata={"help": "task generator settings as YAML, e.g. '{min_terms: 2, max_terms: 3}' (empty: for chain_sum the bundled model's range, 2-3 terms of one digit shown as the bare expression, prompt_format: expression; for other tasks reasoning-gym's defaults)"})
    # the objective
    objective: str = field(default="passk", metadata={"help": "one of " + ", ".join(OBJECTIVES)})
    k: int = field(default=4, metadata={"help": "k of the inference-time objective (passk, majority) and of the pass@k / maj@k report"})
    n: int = field(default=8, metadata={"help": "samples per prompt during training (a group)"})
    alpha: float = field(default=0.0, metadata={"help": "length penalty (Arora & Zanette); 0 turns it off"})
    # rollouts
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per training step (each sampled n times)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature for rollouts and evaluation"})
    max_new_tokens: int = field(default=64, metadata={"help": "response length limit in tokens"})
    # PPO
    steps: int = field(default=200, metadata={"help": "training steps (one rollout batch each)"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=5, metadata={"help": "linear learning-rate warm-up steps"})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each rollout batch"})
    minibatches: int = field(default=2, metadata={"help": "optimiser steps per epoch (the batch is split into this many)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per minibatch (gradient accumulation)"})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip (low side; also the high side unless clip_high is set)"})
    clip_high: Optional[float] = field(default=None, metadata={"help": "PPO ratio clip on the high side (DAPO's clip-higher)"})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty against the frozen initial model (0: no reference model kept)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 turns it off)"})
    # evaluation
    eval_problems: int = field(default=200, metadata={"help": "held-out problems for the before/after evaluation (0 skips it)"})
    eval_n: int = field(default=8, metadata={"help": "samples per held-out problem (the n of the unbiased pass@k / maj@k)"})
    eval_batch: int = field(default=512, metadata={"help": "sequences generated at once during evaluation"})
    # bookkeeping
    seed: int = field(default=0, metadata={"help": "seed of everything (training problems, sampling, init of the optimiser)"})
    out: str = field(default="runs/ia-train", metadata={"help": "output directory (metrics, checkpoints, summary.json, plots)"})
    checkpoint_every: int = field(default=50, metadata={"help": "save a checkpoint every this many steps (0: only at the end)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in the output directory"})
    stop_after: Optional[int] = field(default=None, metadata={"help": "debugging: stop after this many steps, as if the run were killed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    attention: str = field(default="auto", metadata={"help": "auto (flash-attention when installed and supported, else sdpa), sdpa, eager, flash_attention_2, fa4"})
    backend: Optional[str] = field(default=None, metadata={"help": "ia_kernels backend for the loss (default: the fastest for the device)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: 1 for the tiny model, whose small matrix products only lose from a second thread, else torch's default)"})
    tensorboard: bool = field(default=True, metadata={"help": "also log to TensorBoard when it is installed"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_optional(kind):
    def parse(text: str):
        if str(text).strip().lower() in ("none", "null", ""):
            return None
        return kind(text)
    parse.__name__ = kind.__name__
    return parse


def _parse_yaml_mapping(text: str) -> dict:
    import yaml

    value = yaml.safe_load(text) or {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping, got {text!r}")
    return value


def _arg_type(f: dataclasses.Field):
    kinds = {"int": int, "float": float, "str": str, "bool": _parse_bool, "dict": _parse_yaml_mapping,
             "Optional[int]": _parse_optional(int), "Optional[float]": _parse_optional(float),
             "Optional[str]": _parse_optional(str)}
    return kinds[str(f.type)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ia-train",
        description="Inference-aware RL fine-tuning with ia_kernels. With no arguments: the default "
                    "experiment (the bundled small model on reasoning-gym's chain_sum, before/after "
                    "evaluation on held-out problems).",
    )
    parser.add_argument("--config", default=None, help="YAML file of settings (command-line flags override it)")
    defaults = Config()
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if str(f.type) == "bool":
            # --resume alone means true; --resume false is also accepted.
            parser.add_argument(flag, dest=name, type=_parse_bool, nargs="?", const=True,
                                default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")
        else:
            parser.add_argument(flag, dest=name, type=_arg_type(f), default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default: {default})")
    return parser


def _coerce(name: str, value: Any) -> Any:
    f = FIELDS[name]
    if value is None:
        return None
    kind = str(f.type)
    try:
        if kind in ("int", "Optional[int]"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind in ("float", "Optional[float]"):
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else _parse_bool(value)
        if kind == "dict":
            if not isinstance(value, dict):
                raise ValueError
            return value
        return str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise ConfigError(f"setting '{name}' must be {kind.replace('Optional[', '').rstrip(']')}, got {value!r}") from None


def load_config(argv: list[str] | None = None) -> Config:
    """Parse the command line (and the YAML file it names) into a validated Config."""
    args = vars(build_parser().parse_args(argv))
    config_path = args.pop("config", None)
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(read_yaml(config_path))
    values.update(args)
    if values.get("resume"):
        # A resumed run continues with the settings it was started with; flags given now still win.
        saved = Path(values.get("out", Config.out)) / "config.json"
        if saved.is_file():
            import json

            base = {k: v for k, v in json.loads(saved.read_text()).items()
                    if k in FIELDS and k not in ("resume", "stop_after")}
            values = {**base, **values}
    cfg = Config(**{name: _coerce(name, v) for name, v in values.items()})
    validate(cfg)
    return cfg


def read_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file; give the path of a YAML settings file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting '{unknown[0]}'; known settings: {', '.join(FIELDS)}")
    return data


def validate(cfg: Config) -> None:
    """Cheap checks of everything that can be checked without loading a model."""
    from .models import check_model_source
    from .tasks import check_task

    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"--objective {cfg.objective!r} is unknown; use one of: {', '.join(OBJECTIVES)}")
    positive = ("k", "n", "prompts_per_step", "max_new_tokens", "ppo_epochs", "minibatches", "grad_accum",
                "eval_n", "eval_batch")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("steps", "eval_problems", "checkpoint_every", "warmup_steps", "threads"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.k > cfg.n:
        raise ConfigError(f"--k {cfg.k} is larger than --n {cfg.n}: need k <= n (samples per prompt); raise --n or lower --k")
    if cfg.eval_problems and cfg.k > cfg.eval_n:
        raise ConfigError(f"--k {cfg.k} is larger than --eval-n {cfg.eval_n}: pass@k needs k <= n; raise --eval-n or lower --k")
    if cfg.objective == "majority" and cfg.k != cfg.n:
        raise ConfigError(f"--objective majority needs k == n (got k={cfg.k}, n={cfg.n}); set --k equal to --n")
    if cfg.n < 2 and cfg.objective != "passk":
        raise ConfigError(f"--n {cfg.n}: group estimators need at least 2 samples per prompt; raise --n")
    if (cfg.prompts_per_step * cfg.n) % (cfg.minibatches * cfg.grad_accum):
        raise ConfigError(f"prompts_per_step * n = {cfg.prompts_per_step * cfg.n} sequences do not split into "
                          f"minibatches * grad_accum = {cfg.minibatches * cfg.grad_accum} equal parts; change one of them")
    if cfg.temperature <= 0:
        raise ConfigError(f"--temperature must be positive (sampling), got {cfg.temperature}")
    if not 0 < cfg.clip < 1:
        raise ConfigError(f"--clip must be in (0, 1), got {cfg.clip}")
    if cfg.clip_high is not None and cfg.clip_high <= 0:
        raise ConfigError(f"--clip-high must be positive, got {cfg.clip_high}")
    if cfg.alpha < 0 or cfg.alpha > 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.kl_coef < 0 or cfg.lr <= 0:
        raise ConfigError("--kl-coef must be >= 0 and --lr > 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {cfg.device!r} is unknown; use auto, cpu or cuda")
    if cfg.attention not in ("auto", "sdpa", "eager", "flash_attention_2", "fa4"):
        raise ConfigError(f"--attention {cfg.attention!r} is unknown; use auto, sdpa, eager, flash_attention_2 or fa4")
    import torch

    from .attention import choose_attention

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        choose_attention(cfg.attention, device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file, not a directory; give a directory path (it is created if missing)")
    if cfg.resume and not (out / "checkpoints" / "latest").is_dir():
        raise ConfigError(f"--resume: no checkpoint in {cfg.out}/checkpoints/latest; drop --resume or point --out at the killed run")
    check_task(cfg.task, cfg.task_options)
    check_model_source(cfg.model)

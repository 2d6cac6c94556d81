"""The run configuration: defaults, YAML file, command-line overrides, and validation.

Precedence: the dataclass defaults < the YAML file (`--config`) < command-line flags. Validation
happens before any model, data or output directory is touched, and every problem is reported as one
`ConfigError` line that says what to change (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

OBJECTIVES = ("rloo", "grpo", "dr_grpo", "passk", "passk_chen", "majority")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
SEED_MAX = 2**32 - 1  # numpy's seed range; torch and reasoning-gym accept it too
# Settings a resumed run may change (they do not change what is trained or measured); every other
# setting must match the run's config.json.
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "eval_batch", "threads", "tensorboard", "stop_after",
                     "device", "attention", "backend", "out", "resume")


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
    truncated_reward: str = field(default="zero", metadata={"help": "what a response cut off at --max-new-tokens without an end-of-sequence token earns, in training and in the evaluation: zero (it gave no final answer; Arora & Zanette's rule, and what keeps a policy from running on past its answer) or score (its text is scored like a finished response's)"})
    # rollouts
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per training step (each sampled n times)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature for rollouts and evaluation"})
    max_new_tokens: int = field(default=80, metadata={"help": "response length limit in tokens (the bundled model's longest worked solution is 65)"})
    rollout: str = field(default="hf", metadata={"help": "rollout engine: builtin (ia_train's decode loop: static KV cache, finished rows leave the batch; Llama-style models, others fall back to hf) or hf (Hugging Face generate)"})
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
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty against the frozen initial model as a loss term (k3 estimator; 0: off)"})
    kl_reward_coef: float = field(default=0.0, metadata={"help": "KL penalty against the frozen initial model in the reward (k1 estimator, beta of Arora & Zanette's runs: each token's advantage loses beta times the sum of log(pi/pi_ref) over it and the later tokens of its response; 0: off)"})
    aggregation: Optional[str] = field(default=None, metadata={"help": "how the loss averages over tokens: token-mean (one mean over the batch's tokens), seq-mean-token-mean (each response's token mean, then the mean over responses: Arora & Zanette, OpenRLHF) or seq-mean-token-sum (default: token-mean; dr_grpo always uses its own constant-length normaliser)"})
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
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: torch's default, one per core; on a machine that other busy processes share, fewer threads can be faster)"})
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

    try:
        value = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not valid YAML ({' '.join(str(e).split())[:160]}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping, got {text!r}")
    return value


def _arg_type(f: dataclasses.Field):
    kinds = {"int": int, "float": float, "str": str, "bool": _parse_bool, "dict": _parse_yaml_mapping,
             "Optional[int]": _parse_optional(int), "Optional[float]": _parse_optional(float),
             "Optional[str]": _parse_optional(str)}
    return kinds[str(f.type)]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag raises ConfigError (one line) instead of printing the usage and exiting."""

    def error(self, message: str):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    kind = str(f.type)
    if value is None:
        if kind.startswith("Optional["):
            return None
        raise ConfigError(f"setting '{name}' cannot be null; give {'an' if kind == 'int' else 'a'} {kind} "
                          f"(default: {getattr(Config(), name)!r})")
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
    if _coerce("resume", values.get("resume", False)):
        values = {**saved_settings(values), **values}
    cfg = Config(**{name: _coerce(name, v) for name, v in values.items()})
    validate(cfg)
    return cfg


def saved_settings(values: dict) -> dict:
    """The settings in the resumed run's config.json; ConfigError when `values` (the settings given
    now) would change the experiment (see RESUME_MAY_CHANGE)."""
    from .files import RunFileError, read_json

    out = str(values.get("out", Config.out))
    path = Path(out) / "config.json"
    if not path.exists():
        return {}  # validate() says what is missing
    try:
        saved = read_json(path)
    except RunFileError as e:
        raise ConfigError(f"--resume: {e}; the run's settings are unknown, start a new run with another --out") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} does not hold a mapping of settings; start a new run with another --out")
    base = {k: v for k, v in saved.items() if k in FIELDS and k not in ("resume", "stop_after")}
    changed = []
    for name, value in values.items():
        if name in base and name not in RESUME_MAY_CHANGE:
            try:
                differs = _coerce(name, value) != _coerce(name, base[name])
            except ConfigError:
                differs = True
            if differs:
                changed.append(f"--{name.replace('_', '-')} {base[name]!r} -> {value!r}")
    if changed:
        raise ConfigError(f"--resume: {', '.join(changed)} would change the experiment saved in {path}; "
                          f"drop {'them' if len(changed) > 1 else 'it'} to continue the run, or start a new run "
                          "with another --out (only these may change on resume: "
                          f"{', '.join(n for n in RESUME_MAY_CHANGE if n not in ('out', 'resume'))})")
    return base


def resume_changes(saved: dict, cfg: Config) -> list[str]:
    """'name old -> new' for each setting a resumed run changes (all in RESUME_MAY_CHANGE)."""
    return [f"{name} {saved[name]!r} -> {getattr(cfg, name)!r}" for name in RESUME_MAY_CHANGE
            if name in saved and name not in ("out", "resume", "stop_after") and saved[name] != getattr(cfg, name)]


def read_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file; give the path of a YAML settings file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting '{unknown[0]}'; known settings: {', '.join(FIELDS)}")
    return data


def validate(cfg: Config) -> None:
    """Cheap checks of everything that can be checked without loading a model."""
    from .distributed import check as check_launcher
    from .models import check_model_source
    from .tasks import check_task

    for name, f in FIELDS.items():  # nan and inf pass every comparison below; refuse them first
        value = getattr(cfg, name)
        if "float" in str(f.type) and value is not None and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
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
    if cfg.rollout not in ("builtin", "hf"):
        raise ConfigError(f"--rollout {cfg.rollout!r} is unknown; use builtin or hf")
    if not 0 < cfg.clip < 1:
        raise ConfigError(f"--clip must be in (0, 1), got {cfg.clip}")
    if cfg.clip_high is not None and cfg.clip_high <= 0:
        raise ConfigError(f"--clip-high must be positive, got {cfg.clip_high}")
    if cfg.alpha < 0 or cfg.alpha > 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.truncated_reward not in ("zero", "score"):
        raise ConfigError(f"--truncated-reward {cfg.truncated_reward!r} is unknown; use zero or score")
    if cfg.truncated_reward == "score" and cfg.alpha > 0:
        raise ConfigError("--truncated-reward score with --alpha > 0: Arora & Zanette's length penalty scores a "
                          "response cut off without EOS 0 by definition; drop one of them")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    for name in ("kl_coef", "kl_reward_coef", "weight_decay", "max_grad_norm"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.aggregation is not None and cfg.aggregation not in AGGREGATIONS:
        raise ConfigError(f"--aggregation {cfg.aggregation!r} is unknown; use one of: {', '.join(AGGREGATIONS)}")
    if cfg.objective == "dr_grpo" and cfg.aggregation is not None:
        raise ConfigError(f"--objective dr_grpo normalises by a constant length (its definition), so --aggregation "
                          f"{cfg.aggregation} would change it; drop --aggregation or use another objective")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise ConfigError(f"--stop-after must be at least 1 (or left unset), got {cfg.stop_after}")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"--seed must be in [0, {SEED_MAX}], got {cfg.seed}")
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
    check_backend(cfg.backend, device)
    out = Path(cfg.out)
    check_output_dir(out)
    if cfg.resume:
        check_resume(cfg, out)
    check_task(cfg.task, cfg.task_options)
    check_model_source(cfg.model)
    check_launcher(cfg)


# ops that ia-train calls with backend=cfg.backend
BACKEND_OPS = ("linear_logprobs", "linear_ppo_loss")


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


def check_output_dir(out: Path) -> None:
    """ConfigError unless `out` is, or can be created as, a directory this process can write to.
    Nothing is created: the check writes a probe file in `out` or its nearest existing parent."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; give a directory path (it is created if missing)")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so the directory cannot be created; give another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ia-train-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if existing == out else f" (cannot create it in {existing})"
        raise ConfigError(f"--out {out} is not writable{where}: {(e.strerror or str(e)).lower()}; "
                          "give a directory you can write to") from None


def check_resume(cfg: Config, out: Path) -> None:
    from . import checkpoint

    folder, damaged = checkpoint.usable(out / "checkpoints")
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

"""The run configuration, at the bottom of ia_train: the settings (`Config`), how they are read (YAML
file, command-line flags, the saved settings of a resumed run) and the checks of their values.

Precedence: the dataclass defaults < the YAML file (`--config`) < command-line flags. The checks here
need nothing but the values; what needs a subsystem (the model's files, the task's generator, the
output directory, the launcher's environment, the kernels' backends) is checked by that subsystem,
and the commands call those checks (loop/checks.py for training, evaluation/cli.py for `eval`) before
any model, data or output directory is touched. Every problem is one `ConfigError` line that says
what to change (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ia_kernels import ESTIMATORS, ESTIMATORS_USING_K

from .errors import ConfigError

OBJECTIVES = ESTIMATORS  # every group_advantages estimator is a training objective
USES_K = ESTIMATORS_USING_K  # the objectives whose definition involves k samples
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
SEED_MAX = 2**32 - 1  # numpy's seed range; torch and reasoning-gym accept it too
# Settings a resumed run may change (they do not change what is trained or measured); every other
# setting must match the run's config.json.
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "eval_batch", "threads", "tensorboard", "stop_after",
                     "device", "attention", "backend", "dist_timeout", "packing", "gradient_checkpointing", "out",
                     "resume")


@dataclass
class Config:
    # what to train
    model: str = field(default="tiny", metadata={"help": "'tiny' (the bundled model), 'smollm2', or a local Hugging Face model directory"})
    task: str = field(default="chain_styles", metadata={"help": "chain_styles (the bundled task the tiny model is trained on: one-digit chain sums in classes t2-t5 and pick, two answer styles, hidden per-prompt rubrics), a reasoning-gym task name (e.g. chain_sum, basic_arithmetic), or math500 / aime24 / aime25 / humaneval"})
    task_options: dict = field(default_factory=dict, metadata={"help": "reasoning-gym generator settings as YAML, e.g. '{min_terms: 2, max_terms: 3}' (empty: for chain_sum 2-3 terms of one digit shown as the bare expression, prompt_format: expression; for other reasoning-gym tasks their defaults; chain_styles and the benchmark tasks take none)"})
    # the objective
    objective: str = field(default="passk", metadata={"help": "one of " + ", ".join(OBJECTIVES)})
    k: int = field(default=4, metadata={"help": "k of the inference-time objective (passk, majority) and of the pass@k / maj@k report"})
    n: int = field(default=8, metadata={"help": "samples per prompt during training (a group)"})
    alpha: float = field(default=0.0, metadata={"help": "length penalty (Arora & Zanette); 0 turns it off"})
    truncated_reward: str = field(default="zero", metadata={"help": "what a response cut off at --max-new-tokens without an end-of-sequence token earns, in training and in the evaluation: zero (it gave no final answer; Arora & Zanette's rule, and what keeps a policy from running on past its answer) or score (its text is scored like a finished response's)"})
    # rollouts
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per training step (each sampled n times)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature for rollouts and evaluation"})
    max_new_tokens: int = field(default=128, metadata={"help": "response length limit in tokens (the bundled model's longest worked solution, an explained five-term chain, is 108 with EOS)"})
    rollout: str = field(default="builtin", metadata={"help": "rollout engine: builtin (ia_train's own engine: continuous batching over a paged KV cache, the sampler's log-probs kept as the old log-probs; Llama-style models, others fall back to hf) or hf (Hugging Face generate)"})
    packing: str = field(default="pieces", metadata={"help": "the training forward's batch: pieces (each micro-batch in length-sorted pieces, padding cut: the CPU's path) or varlen (each micro-batch's rows packed into one sequence for flash-attention's varlen kernel under --attention flash_attention_2 / fa4; not run on a GPU yet, so opt-in; on a CPU it is correct but slower)"})
    # PPO
    steps: int = field(default=200, metadata={"help": "training steps (one rollout batch each)"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=5, metadata={"help": "linear learning-rate warm-up steps"})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each rollout batch"})
    minibatches: int = field(default=2, metadata={"help": "optimiser steps per epoch (the batch is split into this many)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per minibatch (gradient accumulation)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute each decoder layer's activations in the backward pass instead of keeping them (Hugging Face's activation checkpointing, non-reentrant): the training forward keeps one layer's activations at a time instead of every layer's, for about one more forward of compute; the same gradients. TRL's GRPOConfig turns it on by default"})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip (low side; also the high side unless clip_high is set)"})
    clip_high: Optional[float] = field(default=None, metadata={"help": "PPO ratio clip on the high side (DAPO's clip-higher)"})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty against the frozen initial model as a loss term (k3 estimator; 0: off)"})
    kl_reward_coef: float = field(default=0.0, metadata={"help": "KL penalty against the frozen initial model in the reward (k1 estimator, beta of Arora & Zanette's runs: each token's advantage loses beta times the sum of log(pi/pi_ref) over it and the later tokens of its response; 0: off)"})
    whiten_advantages: bool = field(default=False, metadata={"help": "normalise each step's advantages over its whole rollout batch (every rank's), token-weighted, after the KL-in-reward shaping: A' = (A - mean) / std over all response tokens, as OpenRLHF's replay buffer does before the loss for every estimator but its group_norm (Arora & Zanette trained with it); false: the estimator's advantages as they are"})
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
    overwrite: bool = field(default=False, metadata={"help": "start a new run in an output directory that holds another run, deleting that run's files (config, metrics, checkpoints, evaluations, plots) first; without it such a directory is refused"})
    stop_after: Optional[int] = field(default=None, metadata={"help": "debugging: stop after this many steps, as if the run were killed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    attention: str = field(default="auto", metadata={"help": "auto (flash-attention when installed and supported, else sdpa), sdpa, eager, flash_attention_2, fa4"})
    backend: Optional[str] = field(default=None, metadata={"help": "ia_kernels backend for the loss (default: the fastest for the device)"})
    dist_timeout: int = field(default=300, metadata={"help": "seconds each process of a torchrun (data-parallel) run waits for the others to start before it stops with an error"})
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
    raise argparse.ArgumentTypeError(f"expected true or false, got {shown(text)}")


def _parse_optional(kind):
    def parse(text: str):
        if str(text).strip().lower() in ("none", "null", ""):
            return None
        return kind(text)
    parse.__name__ = kind.__name__
    return parse


MAX_YAML_BYTES = 1 << 20  # a settings file is a few hundred bytes; refuse what cannot be one


def shown(value, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: an error message names a bad value, never prints a huge one."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_yaml(text: str, where: str):
    """The YAML value of `text`, read strictly for settings: no aliases (`*name`: a settings file needs
    none, and a few hundred bytes of nested aliases expand to gigabytes), no key given twice in a
    mapping (YAML keeps the last silently), every mapping key text. ConfigError (one line, starting
    with `where`) otherwise."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"{where}: line {mark.line + 1}: YAML aliases (*name) are not accepted in settings; "
                                  "write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: line {key_node.start_mark.line + 1}: the key {shown(key)} is not text; "
                                      "setting names are words (quote it if it is meant as one)")
                if key in seen:
                    raise ConfigError(f"{where}: line {key_node.start_mark.line + 1}: {key!r} is given twice; "
                                      "keep one (YAML would silently use the last)")
                seen.add(key)
            return super().construct_mapping(node, deep)

    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: more than {MAX_YAML_BYTES} bytes; a settings file is much smaller")
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def _parse_yaml_mapping(text: str) -> dict:
    try:
        value = parse_yaml(text, "--task-options") or {}
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--task-options: ")) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping, got {shown(text)}")
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
                    "experiment (the bundled small model on the bundled chain_styles task, before/after "
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
        raise ConfigError(f"setting '{name}' must be {kind.replace('Optional[', '').rstrip(']')}, got {shown(value)}") from None


def read_settings(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The settings given on the command line and in the YAML file it names (--config), as given
    (flags override the file); nothing is coerced or checked yet."""
    args = vars((parser or build_parser()).parse_args(argv))
    config_path = args.pop("config", None)
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(read_yaml(config_path))
    values.update(args)
    return values


def make_config(values: dict[str, Any]) -> Config:
    """A Config from given settings, each coerced to its field's type (ConfigError when it cannot be);
    the others keep their defaults."""
    return Config(**{name: _coerce(name, v) for name, v in values.items()})


def load_config(argv: list[str] | None = None) -> Config:
    """The training command's settings: the command line and its YAML file, and with --resume the
    resumed run's saved settings under them. Only parsed and coerced: loop.checks.validate checks them."""
    values = read_settings(argv)
    if _coerce("resume", values.get("resume", False)):
        values = {**saved_settings(values), **values}
    return make_config(values)


def saved_settings(values: dict) -> dict:
    """The settings in the resumed run's config.json; ConfigError when `values` (the settings given
    now) would change the experiment (see RESUME_MAY_CHANGE)."""
    out = str(values.get("out", Config.out))
    path = Path(out) / "config.json"
    if not path.exists():
        return {}  # validate() says what is missing
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--resume: {path} is unreadable ({str(e).splitlines()[0][:120]}); the run's settings are "
                          "unknown, start a new run with another --out") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} does not hold a mapping of settings; start a new run with another --out")
    base = {k: v for k, v in saved.items() if k in FIELDS and k not in ("resume", "stop_after", "overwrite")}
    changed = []
    for name, value in values.items():
        if name in base and name not in RESUME_MAY_CHANGE:
            try:
                differs = _coerce(name, value) != _coerce(name, base[name])
            except ConfigError:
                differs = True
            if differs:
                changed.append(f"--{name.replace('_', '-')} {shown(base[name])} -> {shown(value)}")
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
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file; give the path of a YAML settings file")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"--config {path}: more than {MAX_YAML_BYTES} bytes; a settings file is much smaller")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    data = parse_yaml(text, f"--config {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting {shown(unknown[0])}; known settings: {', '.join(FIELDS)}")
    return data


def flag(name: str) -> str:
    """The command-line flag of a setting."""
    return "--" + name.replace("_", "-")


# per-setting checks: the choices each named setting takes, and the numeric ranges
CHOICES = {"objective": OBJECTIVES, "rollout": ("builtin", "hf"), "truncated_reward": ("zero", "score"),
           "packing": ("pieces", "varlen"),
           "aggregation": AGGREGATIONS, "device": ("auto", "cpu", "cuda"),
           "attention": ("auto", "sdpa", "eager", "flash_attention_2", "fa4")}
AT_LEAST_ONE = ("k", "n", "prompts_per_step", "max_new_tokens", "ppo_epochs", "minibatches", "grad_accum",
                "eval_n", "eval_batch", "dist_timeout")
AT_LEAST_ZERO = ("steps", "eval_problems", "checkpoint_every", "warmup_steps", "threads", "kl_coef",
                 "kl_reward_coef", "weight_decay", "max_grad_norm")


# Upper bounds, so that a typo (--n 1e9) is refused before any work rather than failing deep inside
# an allocation; each is far beyond what a run on one machine needs.
AT_MOST = {"n": 1 << 16, "k": 1 << 16, "eval_n": 1 << 16, "prompts_per_step": 1 << 20, "max_new_tokens": 1 << 20,
           "steps": 10**8, "eval_problems": 10**7, "eval_batch": 1 << 20, "ppo_epochs": 1000, "minibatches": 1 << 20,
           "grad_accum": 1 << 20, "checkpoint_every": 10**8, "warmup_steps": 10**8, "stop_after": 10**8,
           "threads": 4096, "dist_timeout": 7 * 24 * 3600}
MAX_BATCH = 1 << 20  # sequences in one step's rollout batch (prompts_per_step * n)


def _choice_error(name: str, value) -> ConfigError:
    options = CHOICES[name]
    if name == "objective" or name == "aggregation":
        return ConfigError(f"{flag(name)} {shown(value)} is unknown; use one of: {', '.join(options)}")
    listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 2 else " or ".join(options)
    return ConfigError(f"{flag(name)} {shown(value)} is unknown; use {listed}")


def check_values(cfg: Config, names=None) -> None:
    """ConfigError (one line) for the first setting among `names` (default: all) whose value is out
    of its range or not one of its choices; each setting on its own, no relation between them."""
    names = list(FIELDS) if names is None else [n for n in FIELDS if n in names]
    for name in names:  # nan and inf pass every comparison below; refuse them first
        value = getattr(cfg, name)
        if "float" in str(FIELDS[name].type) and value is not None and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} must be a finite number, got {value}")
    for name in names:
        value = getattr(cfg, name)
        if name in CHOICES and value is not None and value not in CHOICES[name]:
            raise _choice_error(name, value)
        if name in AT_LEAST_ONE and value < 1:
            raise ConfigError(f"{flag(name)} must be at least 1, got {value}")
        if name in AT_LEAST_ZERO and value < 0:
            raise ConfigError(f"{flag(name)} must be 0 or more, got {value}")
        if name in AT_MOST and value is not None and value > AT_MOST[name]:
            raise ConfigError(f"{flag(name)} {value} is more than ia-train accepts (at most {AT_MOST[name]})")
    ranges = {
        "temperature": (lambda v: v > 0, "must be positive (sampling)"),
        "clip": (lambda v: 0 < v < 1, "must be in (0, 1)"),
        "clip_high": (lambda v: v is None or v > 0, "must be positive"),
        "alpha": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        "lr": (lambda v: v > 0, "must be positive"),
        "stop_after": (lambda v: v is None or v >= 1, "must be at least 1 (or left unset)"),
        "seed": (lambda v: 0 <= v <= SEED_MAX, f"must be in [0, {SEED_MAX}]"),
    }
    for name in names:
        if name in ranges and not ranges[name][0](getattr(cfg, name)):
            raise ConfigError(f"{flag(name)} {ranges[name][1]}, got {getattr(cfg, name)}")


def check_training(cfg: Config) -> None:
    """Every setting's value (check_values), then what the training settings require of each other."""
    check_values(cfg)
    if cfg.prompts_per_step * cfg.n > MAX_BATCH:
        raise ConfigError(f"prompts_per_step * n = {cfg.prompts_per_step * cfg.n} sequences per step is more than "
                          f"ia-train accepts (at most {MAX_BATCH}); lower --prompts-per-step or --n")
    if cfg.k > cfg.n:
        raise ConfigError(f"--k {cfg.k} is larger than --n {cfg.n}: need k <= n (samples per prompt); raise --n or lower --k")
    if cfg.eval_problems and cfg.k > cfg.eval_n:
        raise ConfigError(f"--k {cfg.k} is larger than --eval-n {cfg.eval_n}: pass@k needs k <= n; raise --eval-n or lower --k")
    if cfg.objective == "majority" and cfg.k != cfg.n:
        raise ConfigError(f"--objective majority needs k == n (got k={cfg.k}, n={cfg.n}); set --k equal to --n")
    if cfg.n < 2 and cfg.objective not in ("passk", "reinforce"):
        raise ConfigError(f"--n {cfg.n}: group estimators need at least 2 samples per prompt; raise --n")
    if (cfg.prompts_per_step * cfg.n) % (cfg.minibatches * cfg.grad_accum):
        raise ConfigError(f"prompts_per_step * n = {cfg.prompts_per_step * cfg.n} sequences do not split into "
                          f"minibatches * grad_accum = {cfg.minibatches * cfg.grad_accum} equal parts; change one of them")
    if cfg.truncated_reward == "score" and cfg.alpha > 0:
        raise ConfigError("--truncated-reward score with --alpha > 0: Arora & Zanette's length penalty scores a "
                          "response cut off without EOS 0 by definition; drop one of them")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--overwrite deletes the run that --resume would continue; give one of them")
    if cfg.objective == "dr_grpo" and cfg.aggregation is not None:
        raise ConfigError(f"--objective dr_grpo normalises by a constant length (its definition), so --aggregation "
                          f"{cfg.aggregation} would change it; drop --aggregation or use another objective")

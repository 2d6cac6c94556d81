"""`ia-train eval`: pass@k and maj@k of a model on a task, without training.

    ia-train eval --model smollm2 --task math500 --n 16 --k 1,4,16

Samples n responses per held-out problem of the task (its eval split, the same problems a training
run evaluates on) and reports, for every k, the unbiased pass@k and the exact maj@k from those n
samples, with 95% bootstrap intervals over problems, and the mean response length. The figures
users compare against papers. Every other option is the training command's (`ia-train --help`):
--eval-problems, --temperature, --max-new-tokens, --eval-batch, --seed, --device, --out, ...
"""

from __future__ import annotations

from pathlib import Path

from ..config import AT_MOST, Config, OneLineParser, build_parser, check_values, make_config, read_settings
from ..errors import ConfigError

# The training command's settings that `ia-train eval` uses; giving any other one as a flag is refused
# (it would be ignored). A --config file may hold the others (a training recipe): they are read and
# type-checked, not used.
EVAL_SETTINGS = ("model", "task", "task_options", "temperature", "max_new_tokens", "truncated_reward", "rollout",
                 "eval_problems", "eval_batch", "seed", "out", "device", "attention", "threads", "config")
DEFAULT_OUT = "runs/ia-train-eval"


def parse(argv: list[str]):
    """(config, ks): --n and --k here; everything else goes to the training command's parser."""
    parser = OneLineParser(prog="ia-train eval", description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--k", default="1,4,16", help="comma-separated k values, each <= n (default 1,4,16)")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print("\nother options: as `ia-train --help` (model, task, eval-problems, temperature, max-new-tokens, "
              "eval-batch, rollout, seed, device, attention, threads, out)")
        raise SystemExit(0)
    try:
        ks = sorted({int(v) for v in args.k.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--k {args.k!r}: give comma-separated integers, e.g. 1,4,16") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k {args.k!r}: every k must be at least 1")
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.n > AT_MOST["eval_n"]:
        raise ConfigError(f"--n {args.n} is more than ia-train eval accepts (at most {AT_MOST['eval_n']})")
    if ks[-1] > args.n:
        raise ConfigError(f"--k {ks[-1]} is larger than --n {args.n}: pass@k from n samples needs k <= n; raise --n")
    given = vars(build_parser().parse_args(rest))
    unused = [name for name in given if name not in EVAL_SETTINGS]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        hint = " (use --n for the samples per problem)" if "eval_n" in unused else ""
        raise ConfigError(f"{flags}: training setting{'s' if len(unused) > 1 else ''} that ia-train eval does not "
                          f"use{hint}; drop {'them' if len(unused) > 1 else 'it'} (it takes: --n, --k, "
                          f"{', '.join('--' + n.replace('_', '-') for n in EVAL_SETTINGS)})")
    values = read_settings(rest)
    if "out" not in given:
        values["out"] = DEFAULT_OUT
    cfg = make_config({**values, "eval_n": args.n})
    check(cfg)
    return cfg, ks


def check(cfg: Config) -> None:
    """ConfigError (one line) for the first problem with the settings an evaluation uses."""
    from ..models import check_model_source, check_response_length
    from ..models.attention import choose_attention
    from ..runtime import distributed
    from ..runtime.files import check_output_dir
    from ..tasks import check_task

    check_values(cfg, EVAL_SETTINGS)
    if cfg.eval_problems < 1:
        raise ConfigError("--eval-problems must be at least 1 for an evaluation")
    distributed.check_device(cfg.device)
    try:
        choose_attention(cfg.attention, distributed.pick_device(cfg.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_output_dir(cfg.out)
    check_task(cfg.task, cfg.task_options)
    check_model_source(cfg.model)
    check_response_length(cfg.model, cfg.max_new_tokens)


def run_eval(cfg: Config, ks: list[int]) -> dict:
    import torch

    from ..models import load_model
    from ..models.attention import choose_attention
    from ..rollout import make_engine
    from ..runtime.distributed import pick_device
    from ..runtime.files import write_json, writing
    from ..runtime.seeding import seed_everything
    from ..tasks import load_task
    from .metrics import summarize
    from .report import eval_table
    from .sampling import problem_classes, sample_and_score

    out = Path(cfg.out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.threads or cfg.model == "tiny":
        torch.set_num_threads(cfg.threads or 1)
    try:
        attention = choose_attention(cfg.attention, device)
        model, tokenizer = load_model(cfg.model, device=device, attention=attention)
        model.eval()
        task = load_task(cfg.task, cfg.task_options)
        problems = list(task.problems("eval", cfg.eval_problems, cfg.seed))
        print(f"ia-train eval: model {cfg.model}, task {cfg.task}, {len(problems)} problems, n={cfg.eval_n}, "
              f"k={','.join(map(str, ks))}, device {device}, attention {attention}", flush=True)
        with torch.no_grad():
            correct, answers, lengths, samples = sample_and_score(make_engine(cfg.rollout, model, tokenizer), task,
                                                                  problems, cfg, "eval")
    finally:
        torch.set_num_threads(threads)
    results: dict = {"model": cfg.model, "task": cfg.task, "n": cfg.eval_n, "ks": ks, "problems": len(problems),
                     "temperature": cfg.temperature, "seed": cfg.seed}
    classes = problem_classes(problems)
    for k in ks:
        s = summarize(correct, answers, lengths, k, seed=cfg.seed, classes=classes)
        for metric in ("pass", "maj"):
            results[f"{metric}@{k}"] = s[f"{metric}@k"]
            results[f"{metric}@{k}_ci"] = s[f"{metric}@k_ci"]
        results["mean_tokens"], results["mean_tokens_ci"] = s["mean_tokens"], s["mean_tokens_ci"]
        for c, values in (s.get("per_class") or {}).items():  # per problem class, when the task has classes
            cell = results.setdefault("per_class", {}).setdefault(c, {"problems": values["problems"],
                                                                        "mean_tokens": values["mean_tokens"]})
            cell[f"pass@{k}"], cell[f"maj@{k}"] = values["pass@k"], values["maj@k"]
    print(eval_table(results, ks, cfg.eval_n, len(problems)))
    write_json(out / "eval.json", results)
    write_json(out / "samples_eval.json", samples[:50], indent=1)
    print(f"wrote {out / 'eval.json'}")
    return results

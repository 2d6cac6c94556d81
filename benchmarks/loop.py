"""python -m benchmarks loop: the RL step of ia-train against TRL's GRPOTrainer, side by side.

Both systems train the same model on the same prompts (temperature 1, no KL, CPU) with the same
thread count: --model tiny (the bundled model on its task chain_styles, the default experiment's
16 prompts x 8 samples, 128 new tokens) or --model smollm2 (SmolLM2-135M-Instruct, vocabulary 49,152,
on reasoning-gym's chain_sum: 8 prompts x 8 samples, 256 new tokens);
--prompts, --n and --max-new-tokens override. Each system runs in its own worker process (so each
has its own peak RSS) and the parent alternates blocks of steps between them (ia-train first in odd
rounds, TRL first in even ones), so that drifting load on the machine hits both alike. A "step" is
one rollout batch and its optimiser step(s).

Reported per system: s/step (total time / steps) and the median, response tokens per second, the
phase split per step (generation; old-logp pass; loss forward + backward; optimiser; the rest:
rewards, advantages, batching), the worker's peak RSS over its steps (and apart, the peak of loading
the model, which the count restarts after; and apart, the peak while sampling in the worker's first
step, before anything was trained, and the peak while training, from RSS sampled every 5 ms), and the fraction of the FLOP floor: a step
needs at least 2P FLOPs per generated token and 6P per trained token (P parameters), and each
worker measures this machine's fp32 GEMM rate at its thread count before it starts (the floor's
time is those FLOPs at that rate; `floor_frac` = floor time / step time).

--preset issue (default): one optimiser step per rollout batch (ia-train --minibatches 1, TRL
steps_per_generation 1). --preset default: the default experiment's two optimiser steps per batch
(ia-train --minibatches 2, TRL steps_per_generation 2). Activation checkpointing is the same in both:
off by default (TRL's GRPOConfig turns it on unless told; compared that way TRL would pay one more
forward per step for its lower memory), on with --gradient-checkpointing on. The ia-train side samples with its default
engine (the built-in one) unless --rollout says otherwise. TRL is optional: without it the ia-train
side runs alone and the comparison is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MARK = "@@loop "  # worker -> parent lines start with this (everything else is the libraries' chatter)
# per model: task, prompts per step, samples per prompt, response limit. tiny: the default experiment's
# shape (its bundled task, 16 x 8, 128 tokens); smollm2: reasoning-gym's chain_sum, 8 x 8, 256 tokens
MODELS = {"tiny": {"task": "chain_styles", "prompts": 16, "n": 8, "max_new_tokens": 128},
          "smollm2": {"task": "chain_sum", "prompts": 8, "n": 8, "max_new_tokens": 256}}
PHASES = ("generation", "old_logp", "loss_fwd_bwd", "optimizer", "other")


def _timed(fn, clock: dict, key: str, spans: list | None = None):
    """fn, adding the wall time of each call to clock[key] (the phase split), and its (start, end) to
    spans when given."""
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t1 = time.perf_counter()
            clock[key] += t1 - t0
            if spans is not None:
                spans.append((t0, t1))
    return wrapper


class RssTrace:
    """The process's resident memory, sampled every `every` seconds by a thread, so that a step's peak
    can be split by phase: the peak while sampling responses and the peak while training on them
    (the process-wide VmHWM gives only their maximum)."""

    def __init__(self, every: float = 0.005):
        import threading

        self.samples: list[tuple[float, int]] = []
        self._page = os.sysconf("SC_PAGE_SIZE")
        # a daemon thread: it polls for as long as the worker process lives
        threading.Thread(target=self._poll, args=(every,), daemon=True).start()

    def _poll(self, every: float) -> None:
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * self._page
            self.samples.append((time.perf_counter(), rss))
            time.sleep(every)

    def split(self, start: float, end: float, generation: list[tuple[float, float]]) -> dict:
        """{"rss_generation", "rss_training"}: the peaks in [start, end] inside the generation spans and
        outside them (bytes; 0 where no sample fell). Samples before `end` are dropped afterwards."""
        inside = lambda t: any(a <= t <= b for a, b in generation)  # noqa: E731
        gen = [rss for t, rss in self.samples if start <= t <= end and inside(t)]
        train = [rss for t, rss in self.samples if start <= t <= end and not inside(t)]
        self.samples = [x for x in self.samples if x[0] > end]
        return {"rss_generation": max(gen, default=0), "rss_training": max(train, default=0)}


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def gemm_rate(threads: int, seconds: float = 1.5) -> float:
    """This machine's fp32 GEMM rate (FLOP/s) at `threads` threads: the median of repeated
    [2048 x 1024] @ [1024 x 2048] products (the training step's GEMMs are of this order)."""
    import statistics

    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 1024), torch.randn(1024, 2048)
    torch.mm(a, b)
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * 2048 * 1024 * 2048 / (time.perf_counter() - t0))
    return statistics.median(rates)


def _reset_peak_rss() -> int:
    """Restart the peak-RSS count (Linux: clear_refs 5), so that the peak reported covers the steps, not
    loading the model (dequantising SmolLM2's GGUF file: ~1.3 GB with one thread). Returns the peak so
    far (the load's), 0 where the kernel does not allow the reset."""
    before = _peak_rss()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return 0
    return before


def _emit(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _command() -> int:
    """The next block size from the parent (0: stop)."""
    line = sys.stdin.readline()
    return int(line.strip() or 0)


# ------------------------------------------------------------------------------------------------
# workers


def _import_ia_train_from(path: str) -> None:
    """Makes `import ia_train` load the package under `path` (another checkout's python/ directory),
    ahead of the installed one, to compare versions."""
    import importlib.machinery

    class Finder:
        @staticmethod
        def find_spec(name, search=None, target=None):
            if name == "ia_train" or name.startswith("ia_train."):
                return importlib.machinery.PathFinder.find_spec(name, [path] if name == "ia_train" else search)
            return None

    sys.meta_path.insert(0, Finder)


# the phases a step reports in its row (ia_train.loop.phases), as this benchmark names them
IA_PHASES = {"generation": "time_generation", "old_logp": "time_old_logp", "loss_fwd_bwd": "time_loss",
             "optimizer": "time_optimizer"}


def _ia_worker(s: dict) -> None:
    import torch

    torch.set_num_threads(s["threads"])
    if s.get("ia_path"):
        _import_ia_train_from(s["ia_path"])
    import dataclasses

    from ia_train.config import Config
    from ia_train.loop import validate
    from ia_train.loop.stages import setup
    from ia_train.loop.step import train_step

    out = tempfile.mkdtemp(prefix="loop-ia-")
    known = {f.name for f in dataclasses.fields(Config)}  # an earlier version (--ia-path) may lack some
    options = {k: v for k, v in s.get("ia_options", {}).items() if k in known}
    if s["gradient_checkpointing"] or "gradient_checkpointing" in known:  # an earlier version has no such setting
        options["gradient_checkpointing"] = s["gradient_checkpointing"]
    cfg = Config(model=s["model"], task=s["task"], prompts_per_step=s["prompts"], n=s["n"],
                 max_new_tokens=s["max_new_tokens"], temperature=1.0, steps=s["total"], kl_coef=0.0,
                 minibatches=s["minibatches"], eval_problems=0, tensorboard=False, threads=s["threads"], out=out,
                 **options)
    validate(cfg)
    rate = gemm_rate(s["threads"])
    r = setup(cfg)
    step = 0
    load_peak = _reset_peak_rss()
    trace = RssTrace()
    _emit({"ready": True, "threads": torch.get_num_threads(), "options": options, "gemm_flops": rate,
           "load_peak_rss": load_peak, "parameters": sum(p.numel() for p in r.model.parameters())})
    while (k := _command()) > 0:
        records = []
        for _ in range(k):
            t0 = time.perf_counter()
            row = train_step(r, step)
            wall = time.perf_counter() - t0
            step += 1
            missing = [key for key in IA_PHASES.values() if key not in row]
            if missing:  # the phase split is what this benchmark reports: never guess it
                raise RuntimeError(f"ia-train's step row lacks {', '.join(missing)}: this checkout does not report "
                                   "the phase split the loop benchmark reads (ia_train.loop.phases)")
            record = {name: row[key] for name, key in IA_PHASES.items()}
            record.update(wall=wall, other=wall - sum(record.values()),
                          tokens=row["mean_tokens"] * s["prompts"] * s["n"])
            # sampling is the step's first phase (train_step): its span starts the step
            record.update(trace.split(t0, t0 + wall, [(t0, t0 + row["time_generation"])]))
            records.append(record)
        _emit({"records": records})
    _emit({"peak_rss": _peak_rss()})


def _trl_worker(s: dict) -> None:
    import torch

    torch.set_num_threads(s["threads"])
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from ia_train.models import format_prompt, load_model
    from ia_train.tasks import load_task, split_problems

    set_seed(0)
    task = load_task(s["task"])
    problems, _ = split_problems(task, train=s["total"] * s["prompts"], held_out=0, seed=0)
    rate = gemm_rate(s["threads"])
    model, tok = load_model(s["model"], device=torch.device("cpu"), attention="sdpa")
    by_prompt = {format_prompt(tok, p.prompt): p for p in problems}
    counts = {"tokens": 0}

    def reward(prompts, completions, completion_ids, **kwargs):
        counts["tokens"] += sum(len(c) for c in completion_ids)
        return task.score_batch([by_prompt[p] for p in prompts], list(completions))

    spg = s["minibatches"]  # optimiser steps per generation batch
    batch = s["prompts"] * s["n"]
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="loop-trl-"), per_device_train_batch_size=batch // spg,
                      steps_per_generation=spg, gradient_accumulation_steps=1, num_generations=s["n"],
                      max_completion_length=s["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
                      num_iterations=1, learning_rate=2e-4, max_grad_norm=1.0, max_steps=s["total"] * spg,
                      use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=10**6,
                      disable_tqdm=True, seed=0, dataloader_num_workers=0,
                      gradient_checkpointing=s["gradient_checkpointing"])
    dataset = Dataset.from_dict({"prompt": list(by_prompt)})
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tok)
    clock = dict.fromkeys(("generation", "prepare", "step", "optimizer"), 0.0)
    marks: dict = {}
    generation_spans: list = []

    def timed(fn, key):
        return _timed(fn, clock, key)

    trainer._generate = _timed(trainer._generate, clock, "generation", generation_spans)
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "prepare")
    trainer.training_step = timed(trainer.training_step, "step")
    state = {"left": 0, "records": [], "t0": 0.0, "in_batch": 0}

    class Pace(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            if state["in_batch"] == 0:
                for key in clock:
                    clock[key] = 0.0
                counts["tokens"] = 0
                state["t0"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, st, control, **kw):
            marks["opt"] = time.perf_counter()

        def on_optimizer_step(self, args, st, control, **kw):
            clock["optimizer"] += time.perf_counter() - marks.pop("opt")

        def on_step_end(self, args, st, control, **kw):
            state["in_batch"] += 1
            if state["in_batch"] < spg:
                return
            state["in_batch"] = 0
            end = time.perf_counter()
            wall = end - state["t0"]
            gen, prep = clock["generation"], clock["prepare"]
            state["records"].append({"wall": wall, "generation": gen, "old_logp": 0.0, "optimizer": clock["optimizer"],
                                     "loss_fwd_bwd": clock["step"] - prep, "other": wall - clock["step"] - clock["optimizer"] + (prep - gen),
                                     "tokens": counts["tokens"], **trace.split(state["t0"], end, generation_spans)})
            generation_spans.clear()
            state["left"] -= 1
            if state["left"] == 0:
                _emit({"records": state["records"]})
                state["records"] = []
                state["left"] = _command()
                if state["left"] <= 0:
                    control.should_training_stop = True

    trainer.add_callback(Pace())
    load_peak = _reset_peak_rss()
    trace = RssTrace()
    _emit({"ready": True, "threads": torch.get_num_threads(), "gemm_flops": rate, "load_peak_rss": load_peak,
           "parameters": sum(p.numel() for p in model.parameters())})
    state["left"] = _command()
    if state["left"] > 0:
        trainer.train()
    _emit({"peak_rss": _peak_rss()})


# ------------------------------------------------------------------------------------------------
# the parent


class Worker:
    def __init__(self, system: str, settings: dict):
        self.system = system
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"loop-{system}-", suffix=".log", delete=False)
        env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.loop", "--worker", system,
                                      "--settings", json.dumps(settings)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.log.seek(0)
        tail = self.log.read()[-3000:]
        raise RuntimeError(f"the {self.system} worker stopped (exit {self.proc.wait()}):\n{tail}")

    def run(self, k: int) -> list[dict]:
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        return self.read()["records"]

    def close(self) -> int:
        self.proc.stdin.write("0\n")
        self.proc.stdin.flush()
        peak = self.read()["peak_rss"]
        self.proc.wait(timeout=60)
        return peak


def _summary(system: str, records: list[dict], peak: int, ready: dict, first: dict) -> dict:
    """A system's row: times, tokens/s, the phase split, peak RSS and the fraction of the FLOP floor
    (2P per generated token + 6P per trained token, every response token being both, at the GEMM
    rate the worker measured)."""
    import statistics

    n = len(records)
    total = sum(r["wall"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    row = {"system": system, "steps": n, "threads": ready.get("threads"), "s_per_step": total / n,
           "median_s": statistics.median(r["wall"] for r in records), "tokens_per_s": tokens / total,
           "tokens_per_step": tokens / n}
    for p in PHASES:
        row[p] = sum(r[p] for r in records) / n
    row["peak_rss_mb"] = peak / 2**20
    row["load_peak_rss_mb"] = ready.get("load_peak_rss", 0) / 2**20
    # RSS sampled every 5 ms (a shorter peak can be missed). Sampling's peak is the process's first step's:
    # after a step has trained, the allocator keeps the freed training memory resident, so a later
    # step's sampling shows the previous step's training peak, not its own need
    row["rss_generation_mb"] = first.get("rss_generation", 0) / 2**20
    row["rss_training_mb"] = max(r.get("rss_training", 0) for r in records) / 2**20
    floor_seconds = 8 * ready["parameters"] * tokens / ready["gemm_flops"]
    row.update(gemm_gflops=ready["gemm_flops"] / 1e9, floor_frac=floor_seconds / total)
    return row


def _trl_available() -> str | None:
    import importlib.util

    for name in ("trl", "datasets"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install trl)"
    return None


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps each (CI)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per system (default 30; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per system first (default 3; quick 1)")
    parser.add_argument("--block", type=int, default=None, help="steps per turn when alternating (default 5; quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", choices=("issue", "default"), default="issue",
                        help="issue: one optimiser step per rollout batch; default: the default experiment's two")
    parser.add_argument("--systems", default="ia,trl")
    parser.add_argument("--rollout", default=None, help="ia-train's --rollout (builtin or hf; default: ia-train's default)")
    parser.add_argument("--ia-options", default="{}", help="extra ia-train settings as JSON, e.g. '{\"lr\": 1e-4}'")
    parser.add_argument("--ia-path", default=None, help="run the ia-train side from this checkout's python/ "
                        "directory (e.g. a git worktree of an earlier commit with ia_train.loop), to compare "
                        "before / after")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny",
                        help="tiny (chain_styles, 16 prompts x 8 x 128 tokens) or smollm2 (chain_sum, 8 prompts x 8 x 256 tokens)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the model's preset)")
    parser.add_argument("--n", type=int, default=None, help="samples per prompt (default: the model's preset)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response limit (default: the model's preset)")
    parser.add_argument("--gradient-checkpointing", choices=("off", "on"), default="off",
                        help="activation checkpointing in both systems' training forward (TRL's GRPOConfig turns it "
                             "on by default; ia-train's --gradient-checkpointing): off keeps every layer's "
                             "activations in both, on recomputes them in both (less memory, one more forward)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        (_ia_worker if args.worker == "ia" else _trl_worker)(json.loads(args.settings))
        return 0
    steps = args.steps or (2 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    block = args.block or (1 if args.quick else 5)
    shape = {key: getattr(args, key, None) if getattr(args, key, None) is not None else value
             for key, value in MODELS[args.model].items()}
    ia_options = json.loads(args.ia_options)
    if args.rollout:
        ia_options["rollout"] = args.rollout
    settings = {"threads": args.threads, "model": args.model, **shape,
                "minibatches": 1 if args.preset == "issue" else 2, "total": warmup + steps + 1,
                "ia_options": ia_options, "ia_path": args.ia_path,
                "gradient_checkpointing": args.gradient_checkpointing == "on"}
    systems = [s for s in args.systems.split(",") if s]
    if "trl" in systems and (why := _trl_available()):
        print(f"TRL side skipped: {why}")
        systems.remove("trl")
    t_start = time.time()
    workers = {s: Worker(s, settings) for s in systems}
    records: dict[str, list] = {s: [] for s in systems}
    first: dict[str, dict] = {}  # each system's first step (warm-up or not): its sampling peak is the clean one
    for s, w in workers.items():
        if warmup:
            first[s] = w.run(warmup)[0]
    done, rnd = 0, 0
    while done < steps:
        k = min(block, steps - done)
        for s in (systems if rnd % 2 == 0 else systems[::-1]):
            got = workers[s].run(k)
            first.setdefault(s, got[0])
            records[s] += got
        done += k
        rnd += 1
    rows = [_summary(s, records[s], workers[s].close(), workers[s].ready, first[s]) for s in systems]
    if len(rows) == 2:
        ratio = rows[1]["s_per_step"] / rows[0]["s_per_step"]
        rows[0]["x_vs_trl"] = ratio
    load = os.getloadavg()
    print(f"preset {args.preset}: model {args.model}, task {shape['task']}, {shape['prompts']} prompts x {shape['n']} samples, "
          f"{shape['max_new_tokens']} new tokens, temperature 1, no KL, "
          f"{settings['minibatches']} optimiser step(s) per batch, activation checkpointing "
          f"{args.gradient_checkpointing} in both, {args.threads} threads; ia-train settings "
          f"{workers['ia'].ready.get('options') if 'ia' in workers else '-'}; {steps} timed steps each "
          f"after {warmup} warm-up, alternating in blocks of {block}; phases in s/step; "
          f"load average at the end {load[0]:.1f}; {time.time() - t_start:.0f}s")
    from .harness import report

    cols = ["system", "steps", "threads", "s_per_step", "median_s", "tokens_per_s", "tokens_per_step", *PHASES,
            "peak_rss_mb", "rss_generation_mb", "rss_training_mb", "load_peak_rss_mb", "gemm_gflops", "floor_frac",
            "x_vs_trl"]
    report("loop", rows, cols, json_path=args.json, extra={"settings": settings, "preset": args.preset,
                                                            "loadavg": load, "records": records})
    if len(rows) == 2:
        print(f"ia-train step throughput: {rows[0]['x_vs_trl']:.2f}x TRL's; FLOP floor fractions: ia-train "
              f"{rows[0]['floor_frac']:.2f}, TRL {rows[1]['floor_frac']:.2f}"
              + (" (--quick: too few steps for a comparison; a smoke test)" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

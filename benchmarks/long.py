"""python -m benchmarks long: rollouts whose responses run long, with a long tail, as the limit doubles.

SmolLM2-135M-Instruct answers MATH-500 problems (its chat template, temperature 1), 2 prompts x 8
samples, with response limits 256, 512 and 1024 tokens: lengths vary several-fold within a batch,
and many responses run to the limit. For each limit, each in its own process (so each has its own
peak RSS), in turn:
    builtin   ia-train's built-in engine alone (continuous batching, paged KV cache)
    generate  Hugging Face generate alone (what TRL samples with)
    ia-step   one ia-train training step (generation, loss, optimiser: the loop benchmark's worker)
    trl-step  one TRL GRPOTrainer step on the same prompts (the loop benchmark's worker)
Reported: response tokens per second, mean / longest response, peak RSS, and each system's tokens/s
relative to its own at the shortest limit (how it holds up as responses grow).

--quick: the bundled tiny model on its task chain_styles, limits 32 and 64 (a smoke test of the machinery).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MARK = "@@long "
SYSTEMS = ("builtin", "generate", "ia-step", "trl-step")
ENGINES = {"builtin": "builtin", "generate": "hf"}  # generation systems -> ia-train's --rollout name


def _generation_worker(s: dict) -> None:
    """Times one engine's generate on the benchmark's prompts (after a short warm-up)."""
    import torch

    torch.set_num_threads(s["threads"])
    from ia_train.models import format_prompt, load_model
    from ia_train.rollout import make_engine
    from ia_train.tasks import load_task

    from .loop import _peak_rss, _reset_peak_rss

    lm, tok = load_model(s["model"], device=torch.device("cpu"), attention="sdpa")
    lm.eval()
    problems = load_task(s["task"]).problems("eval", s["prompts"], 0)
    prompts = [format_prompt(tok, p.prompt) for p in problems]
    _reset_peak_rss()  # the peak of generating, not of loading the model
    engine = make_engine(ENGINES[s["engine"]], lm, tok)
    torch.manual_seed(0)
    engine.generate(prompts[:1], 2, temperature=1.0, max_new_tokens=8)
    torch.manual_seed(1)
    t0 = time.perf_counter()
    ro = engine.generate(prompts, s["n"], temperature=1.0, max_new_tokens=s["limit"], batch_size=s["prompts"] * s["n"])
    wall = time.perf_counter() - t0
    lengths = ro.lengths.float()
    print(MARK + json.dumps({"seconds": wall, "tokens": float(lengths.sum()), "mean_length": float(lengths.mean()),
                             "max_length": float(lengths.max()), "min_length": float(lengths.min()),
                             "peak_rss": _peak_rss()}), flush=True)


def _run_generation(engine: str, settings: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.long", "--worker",
                           json.dumps({**settings, "engine": engine})], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"the {engine} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _run_step(system: str, settings: dict) -> dict:
    """One warm-up step and one timed step of the loop benchmark's worker."""
    from .loop import Worker

    loop_settings = {"threads": settings["threads"], "model": settings["model"], "task": settings["task"],
                     "prompts": settings["prompts"],
                     "n": settings["n"], "max_new_tokens": settings["limit"], "minibatches": 1, "total": 3,
                     "ia_options": {}, "ia_path": None, "gradient_checkpointing": False}  # the same in both
    worker = Worker("ia" if system == "ia-step" else "trl", loop_settings)
    worker.run(1)
    (record,) = worker.run(1)
    peak = worker.close()
    return {"seconds": record["wall"], "tokens": record["tokens"], "mean_length": record["tokens"] /
            (settings["prompts"] * settings["n"]), "max_length": None, "min_length": None, "peak_rss": peak,
            "generation_seconds": record["generation"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks long", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model, short limits (CI)")
    parser.add_argument("--limits", default=None, help="comma-separated response limits (default 256,512,1024)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _generation_worker(json.loads(args.worker))
        return 0
    model, task = ("tiny", "chain_styles") if args.quick else ("smollm2", "math500")
    limits = [int(x) for x in (args.limits or ("32,64" if args.quick else "256,512,1024")).split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if "trl-step" in systems:
        from .loop import _trl_available

        if (why := _trl_available()) is not None:
            print(f"trl-step skipped: {why}")
            systems.remove("trl-step")
    rows, t_start = [], time.time()
    for limit in limits:
        settings = {"model": model, "task": task, "prompts": args.prompts, "n": args.n, "limit": limit,
                    "threads": args.threads}
        for system in systems:
            result = (_run_generation(system, settings) if system in ENGINES
                      else _run_step(system, settings))
            rows.append({"system": system, "limit": limit, "tokens_per_s": result["tokens"] / result["seconds"],
                         "seconds": result["seconds"], "tokens": result["tokens"],
                         "mean_length": result["mean_length"], "max_length": result["max_length"],
                         "min_length": result["min_length"], "peak_rss_mb": result["peak_rss"] / 2**20})
            print(f"  {system:<9} limit {limit:>5}: {rows[-1]['tokens_per_s']:8.1f} tokens/s, "
                  f"peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    for row in rows:
        first = next(r for r in rows if r["system"] == row["system"])
        row["vs_shortest"] = row["tokens_per_s"] / first["tokens_per_s"]
    load = os.getloadavg()
    print(f"model {model}, task {task}: {args.prompts} prompts x {args.n} samples, {args.threads} threads; "
          f"load average at the end {load[0]:.1f}; {time.time() - t_start:.0f}s")
    from .harness import report

    cols = ["system", "limit", "tokens_per_s", "vs_shortest", "seconds", "tokens", "mean_length", "max_length",
            "min_length", "peak_rss_mb"]
    report("long", rows, cols, json_path=args.json, extra={"model": model, "task": task, "prompts": args.prompts,
                                                            "n": args.n, "threads": args.threads, "loadavg": load})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The training run, in stages: setup -> resume -> start the log -> evaluate before -> train (one
step after another: step.py) -> finish (evaluate after, plots, summary).

Determinism: every step reseeds torch from (seed, step) before sampling and shuffling, so a step's
rollouts depend only on the weights and the step number; with the optimiser state restored from a
checkpoint, a resumed run repeats the uninterrupted one exactly (same device and thread count).

Started by torchrun (or another launcher), every rank runs the same stages on its share of the
prompts and of the held-out problems, with the model sharded by FSDP2: see runtime/distributed.py.
"""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, resume_changes
from ..evaluation.metrics import METRICS, change
from ..evaluation.report import class_table, summary_table
from ..evaluation.sampling import evaluate
from ..models import Policy, checkpoint_activations, load_model
from ..models.attention import CALLS as ATTENTION_CALLS
from ..models.attention import choose_attention
from ..rollout import make_engine
from ..runtime import checkpoint, distributed, plots, rundir
from ..runtime.distributed import SINGLE, Dist
from ..runtime.files import RunFileError, read_json, write_json, writing
from ..runtime.logger import MetricsLog, read_metrics
from ..runtime.seeding import seed_everything
from ..tasks import load_task, split_problems
from .hooks import Hooks
from .state import Run

PER_RANK = ("threads", "tensorboard")  # the settings that may differ between the ranks of one run
from .step import TrainingDiverged, train_step


# ------------------------------------------------------------------------------------------------
# the run, in stages: setup -> resume -> start the log -> evaluate before -> train -> finish


def run(cfg: Config, hooks: Hooks | None = None) -> dict:
    """The whole experiment (see the module doc); returns the summary written to summary.json.
    `cfg` is checked already (checks.validate); `hooks` substitute or observe parts of the run."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = SINGLE
    try:
        d, device = distributed.init(cfg.device, cfg.dist_timeout)
        # every rank must run the same experiment: compare the settings once, up front
        distributed.require_same({k: v for k, v in cfg.to_dict().items() if k not in PER_RANK}, d)
        return _run(cfg, d, device, hooks or Hooks())
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep their setting
        distributed.shutdown(d)


def _run(cfg: Config, d: Dist, device: torch.device, hooks: Hooks) -> dict:
    r = setup(cfg, d, device, hooks)
    resume(r)
    log = start_log(r)
    evaluate_before(r)
    row, train_seconds = train(r, log)
    if cfg.stop_after is not None and cfg.stop_after < cfg.steps:
        r.say(f"stopped after step {cfg.stop_after} (--stop-after); continue with --resume")
        return {"stopped_at": cfg.stop_after, "last": row}
    return finish(r, row, train_seconds)


def setup(cfg: Config, d: Dist = SINGLE, device: torch.device | None = None, hooks: Hooks | None = None) -> Run:
    """The output directory, the model (and the frozen reference model for the KL penalty), the task
    and its training / held-out problems, the optimiser and the learning-rate schedule. Under a
    launcher every rank loads the same model and shards it (FSDP2) before the optimiser is made."""
    t_start = time.time()
    out = Path(cfg.out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite and d.main:  # a new run takes the directory over (checks.validate refused it otherwise)
            rundir.clear(out)
    distributed.barrier(d)
    run_id = distributed.broadcast(rundir.saved_run_id(out) if cfg.resume else rundir.new_run_id(), d)
    hooks = hooks or Hooks()
    device = distributed.pick_device(cfg.device) if device is None else device
    seed_everything(cfg.seed)
    attention = choose_attention(cfg.attention, device)
    lm, tokenizer = (hooks.load_model or load_model)(cfg.model, device=device, attention=attention)
    needs_ref = cfg.kl_coef > 0 or cfg.kl_reward_coef > 0
    ref_model = Policy(copy.deepcopy(lm)).eval().requires_grad_(False) if needs_ref else None
    if cfg.gradient_checkpointing:
        checkpoint_activations(lm)
    model = Policy(lm).train()
    if d.enabled:
        distributed.shard(model, d, device)
    task = hooks.task if hooks.task is not None else load_task(cfg.task, cfg.task_options)
    train_problems, eval_problems = split_problems(task, train=max(1, cfg.steps) * cfg.prompts_per_step,
                                                   held_out=cfg.eval_problems, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    engine = make_engine(cfg.rollout, model, tokenizer)
    if hooks.wrap_engine is not None:
        engine = hooks.wrap_engine(engine)
    return Run(cfg, d, out, device, attention, model, tokenizer, ref_model, task, train_problems, eval_problems,
               optimizer, scheduler, engine, hooks, run_id, t_start)


def resume(r: Run) -> None:
    """With --resume: the initial model's saved evaluation (recomputed when it is lost or damaged,
    before the checkpoint loads), then the newest usable checkpoint (weights, optimiser, schedule,
    RNG states); sets r.start_step and r.before."""
    cfg = r.cfg
    if not cfg.resume:
        return
    saved = read_json(r.out / "config.json")  # validate() checked it is there and matches
    if r.eval_problems:
        before_file = r.out / "eval_before.json"
        problem = None
        if r.d.main:
            try:
                r.before = read_json(before_file)
                if not isinstance(r.before, dict) or not all(m in r.before for m in (*METRICS, "per_problem")):
                    raise RunFileError(f"{before_file} does not hold an evaluation summary")
            except RunFileError as e:
                problem, r.before = str(e), None
        r.before, problem = distributed.broadcast((r.before, problem), r.d)
        if problem is not None:  # evaluate the initial model again, before the checkpoint loads
            r.say(f"ia-train: {problem}; evaluating the initial model again", err=True)
            _evaluate_initial(r)
    state = checkpoint.load(r.out / "checkpoints", r.model.lm, r.optimizer, r.scheduler,
                            warn=lambda line: r.say(line, err=True), dist=r.d, run=r.run_id)
    r.start_step = state["step"]
    changes = resume_changes(saved, cfg)
    r.say(f"ia-train: resuming at step {r.start_step} from {state['checkpoint']}"
          + (f"; changed settings: {', '.join(changes)}" if changes else ""))


def start_log(r: Run) -> MetricsLog:
    """config.json (the settings of this invocation), the metrics log (cut back to the checkpoint's
    step on resume), the run's facts (r.info) and the opening line."""
    cfg = r.cfg
    r.info.update({"device": str(r.device), "attention": r.attention, "torch": torch.__version__,
                   "python": platform.python_version(), "threads": torch.get_num_threads(),
                   "parameters": sum(p.numel() for p in r.model.parameters()), "world_size": r.d.world_size})
    distributed.barrier(r.d)  # every rank has read config.json and the metrics before rank 0 rewrites them
    if not r.d.main:
        return NoLog()
    write_json(r.out / "config.json", {**cfg.to_dict(), "run_id": r.run_id})
    log = MetricsLog(r.out, resume_step=r.start_step if cfg.resume else None, tensorboard=cfg.tensorboard)
    ranks = f", {r.d.world_size} processes (FSDP)" if r.d.enabled else ""
    r.say(f"ia-train: model {cfg.model} ({r.info['parameters'] / 1e6:.2f} M parameters), task {cfg.task}, "
          f"objective {cfg.objective} (k={cfg.k}, n={cfg.n}, alpha={cfg.alpha}), device {r.device}{ranks}, "
          f"attention {r.attention}")
    return log


class NoLog:
    """The metrics log of ranks other than 0."""

    def log(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _evaluate_initial(r: Run) -> None:
    r.before, samples = evaluate(r.engine, r.task, r.eval_problems, r.cfg, "before", r.d)
    if r.d.main:
        write_json(r.out / "eval_before.json", r.before)
        write_json(r.out / "samples_before.json", samples[:50], indent=1)


def evaluate_before(r: Run) -> None:
    """The initial model on the held-out problems (kept from the killed run when resuming)."""
    cfg = r.cfg
    if not r.eval_problems:
        return
    if r.before is None:
        _evaluate_initial(r)
    b = r.before
    r.say(f"before: pass@1 {b['pass@1']:.3f}  pass@{cfg.k} {b['pass@k']:.3f}  "
          f"maj@{cfg.k} {b['maj@k']:.3f}  mean tokens {b['mean_tokens']:.1f}")


def train(r: Run, log: MetricsLog) -> tuple[dict, float]:
    """Steps start_step .. steps (or --stop-after), each logged and checkpointed on schedule;
    returns (the last step's row, the seconds spent)."""
    cfg = r.cfg
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(range(r.start_step, last_step), desc="train", unit="step", initial=r.start_step, total=cfg.steps,
               disable=not r.d.main)
    t_train = time.time()
    row: dict = {}
    for step in bar:
        row = train_step(r, step)
        log.log(row)
        if r.hooks.on_step_end is not None:
            r.hooks.on_step_end(r, row)
        bar.set_postfix(acc=f"{row['accuracy']:.2f}", tok=f"{row['mean_tokens']:.0f}", kl=f"{row.get('approx_kl', 0):.3f}")
        done = step + 1
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
            save_checkpoint(r, done)
    bar.close()
    log.close()
    if r.hooks.on_train_end is not None:
        r.hooks.on_train_end(r)
    return row, time.time() - t_train


def save_checkpoint(r: Run, done: int) -> None:
    """A checkpoint after step `done`, unless the weights stopped being finite."""
    lm = r.model.lm
    bad = [name for name, p in lm.named_parameters() if not torch.isfinite(distributed.local_tensor(p)).all()][:1]
    bad = distributed.gather_lists(bad, r.d)
    if bad:
        raise TrainingDiverged(f"step {done}: {bad[0]} holds non-finite values; no checkpoint was written "
                               "(the last one is kept); lower --lr or --max-grad-norm")
    checkpoint.save(r.out / "checkpoints", done, lm, r.optimizer, r.scheduler,
                    {"data_position": done * r.cfg.prompts_per_step}, dist=r.d, run=r.run_id)


def finish(r: Run, row: dict, train_seconds: float) -> dict:
    """The trained model on the held-out problems, the plots, the table and summary.json."""
    cfg, out = r.cfg, r.out
    summary = {"k": cfg.k, "n": cfg.eval_n, "config": cfg.to_dict(), "info": r.info,
               "train_seconds": train_seconds}
    if r.eval_problems:
        after, samples = evaluate(r.engine, r.task, r.eval_problems, cfg, "after", r.d)
        summary.update(before=r.before, after=after, change=change(r.before, after, seed=cfg.seed))
    r.info["attention_calls"] = dict(ATTENTION_CALLS)
    summary["last_step"] = row
    summary["wall_seconds"] = time.time() - r.t_start
    if not r.d.main:
        return summary
    if r.eval_problems:
        write_json(out / "samples_after.json", samples[:50], indent=1)
    with writing(out / "training_curves.png"):
        plots.training_curves(read_metrics(out), out / "training_curves.png",
                              title=f"{cfg.task} / {cfg.objective} (k={cfg.k}, n={cfg.n})")
    if r.eval_problems:
        with writing(out / "before_after.png"):
            plots.before_after(summary, out / "before_after.png")
        print(summary_table(summary))
        if class_table(summary):
            print(class_table(summary))
    write_json(out / "summary.json", summary)
    print(f"wrote {out}/summary.json, metrics.jsonl, training_curves.png"
          f"{', before_after.png' if r.eval_problems else ''} in {summary['wall_seconds']:.0f}s", flush=True)
    return summary

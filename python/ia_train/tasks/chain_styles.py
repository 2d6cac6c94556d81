"""chain_styles: the bundled task, built so that both papers' effects exist in it.

Problems are chains of one-digit terms joined by + and -, e.g. `5 - 4 - 7 =`, generated so that
every partial sum stays in [-9, 9]: each step is a one-digit operation, which the bundled tiny model
learns near-perfectly. A response solves it in one of two styles, both left to right, step by step:

    brief      5-4=1 1-7=-6
               <answer>-6</answer>
    explained  Work left to right.
               5 - 4 = 1
               1 - 7 = -6
               So the answer is -6.
               <answer>-6</answer>                                 (about twice the tokens)

Both styles are right equally often; what differs is a hidden grading rubric, fixed per prompt by a
keyed hash of the prompt text (the model never sees it; equal prompts always get the same one):
`any` (a right answer counts in either style), `explain` (only in the explained style) or `brief`
(only in the brief style). The problem classes, visible in the prompt and each 1/5 of the problems:

    t2, t3, t4, t5   2, 3, 4, 5 terms, the bare expression. The rubric is `explain` with probability
                     RUBRIC_RATES[class] = 0.02, 0.05, 0.10, 0.20, else `any`: the brief style is
                     systematically wrong on a small, class-dependent fraction f of the problems,
                     which the model cannot detect. A length penalty alpha (Arora & Zanette) pays
                     for switching a class to the brief style once alpha exceeds about
                     f / (sigmoid(1) - (1 - f) sigmoid(-1)) = 0.04, 0.10, 0.20, 0.38: each class
                     has its own switching point, so the alpha family forms a staircase of lengths
                     and accuracies (Arora & Zanette's trade-off) instead of collapsing onto one point.
    pick             `Q: ` and 2-3 terms. The rubric is `brief` with probability 0.6, else
                     `explain`: on every problem one style is right and the other systematically
                     wrong, and the prompt does not say which. The mean objective collapses onto
                     the brief style (pass@k -> 0.6 on this class); pass@k training keeps both
                     (pass@4 of a 50/50 policy is 0.6 (1 - 0.5^4) + 0.4 (1 - 0.5^4) = 0.94): the
                     inference-time objectives' effect (Tang et al.; PKPO).

Scoring (the reward), strict on purpose, since a policy hunting for reward will try anything: a
response scores 1 only when its whole text is exactly one of the two styles (BRIEF / EXPLAINED below,
one answer tag, nothing before or after), its tagged answer is the right result, the explained
style's sentence names the same number, and the rubric accepts the style; anything else scores 0.
So both forms in one response, two answer tags, a bare `<answer>` without the working, or text
after the tag never score better than an honest response. The final answer a response votes with
in majority votes is its last `<answer>` tag's number, whatever its form and the rubric (None when
it has none: it casts no vote).

Splits: the training stream draws each problem's class uniformly and its terms uniformly among the
steps that keep the partial sum in range, from a stream seeded by the split and seed. The held-out
split holds distinct prompts, the classes in turn (equal counts), so its per-class metrics weigh
each prompt once. The class spaces are small for two terms: CLASS_SIZES (t2: 155 prompts, t3: 2,440,
t4: 38,480, t5: 607,042; pick: 2,595), so 40 held-out t2 prompts are a quarter of all t2 prompts,
and training skips held-out prompts (tasks.split_problems). Over the whole spaces the rubric rates
come out at t2 4/155 (0.026), t3 0.043, t4 0.098, t5 0.199 explained-only, pick 0.614 brief.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache
from typing import Hashable, Sequence

from .base import Problem

CLASSES = ("t2", "t3", "t4", "t5", "pick")
TERMS = {"t2": (2,), "t3": (3,), "t4": (4,), "t5": (5,), "pick": (2, 3)}
PICK_TAG = "Q: "
# P(rubric = explain) per class of bare chains (else any); pick: P(brief) (else explain)
RUBRIC_RATES = {"t2": 0.02, "t3": 0.05, "t4": 0.10, "t5": 0.20}
PICK_BRIEF_RATE = 0.6
RUBRIC_KEY = b"ia_train chain_styles rubric v1"
LIMIT = 9  # every partial sum stays in [-LIMIT, LIMIT]
PREAMBLE = "Work left to right."

_INT = r"-?\d"
_BRIEF_STEP = rf"{_INT}[+-]\d={_INT}"
BRIEF = re.compile(rf"(?:{_BRIEF_STEP} )*{_BRIEF_STEP}\n<answer>({_INT})</answer>")
_LINE = rf"{_INT} [+-] \d = {_INT}"
EXPLAINED = re.compile(rf"{re.escape(PREAMBLE)}\n(?:{_LINE}\n)+So the answer is ({_INT})\.\n<answer>({_INT})</answer>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


# ---- problems ------------------------------------------------------------------------------------

def steps_of(terms: Sequence[int], ops: Sequence[str]) -> list[tuple[int, str, int, int]]:
    """[(accumulator, op, term, new accumulator)] left to right."""
    acc, out = terms[0], []
    for op, d in zip(ops, terms[1:]):
        new = acc + d if op == "+" else acc - d
        out.append((acc, op, d, new))
        acc = new
    return out


def expression(terms: Sequence[int], ops: Sequence[str]) -> str:
    return " ".join([str(terms[0])] + [f"{op} {d}" for op, d in zip(ops, terms[1:])])


def brief_solution(terms: Sequence[int], ops: Sequence[str]) -> str:
    steps = steps_of(terms, ops)
    return " ".join(f"{a}{op}{b}={c}" for a, op, b, c in steps) + f"\n<answer>{steps[-1][3]}</answer>"


def explained_solution(terms: Sequence[int], ops: Sequence[str]) -> str:
    steps = steps_of(terms, ops)
    result = steps[-1][3]
    return (f"{PREAMBLE}\n" + "".join(f"{a} {op} {b} = {c}\n" for a, op, b, c in steps)
            + f"So the answer is {result}.\n<answer>{result}</answer>")


def _moves(acc: int) -> list[tuple[str, int]]:
    """The (op, digit) steps from `acc` that keep the partial sum in range."""
    return [(op, d) for op in "+-" for d in range(10) if -LIMIT <= (acc + d if op == "+" else acc - d) <= LIMIT]


@lru_cache(maxsize=None)
def _chains(n_terms: int, acc: int) -> int:
    """How many ways to continue from `acc` with n_terms more terms."""
    if n_terms == 0:
        return 1
    return sum(_chains(n_terms - 1, acc + d if op == "+" else acc - d) for op, d in _moves(acc))


def chain_count(n_terms: int) -> int:
    """Distinct chains of n_terms terms (first term 0..9)."""
    return sum(_chains(n_terms - 1, first) for first in range(10))


CLASS_SIZES = {c: sum(chain_count(t) for t in TERMS[c]) for c in CLASSES}


def rubric_of(cls: str, prompt: str) -> str:
    """The hidden rubric of a prompt: a keyed hash of its text, uniform in [0, 1), against the
    class's rate (so equal prompts always get the same rubric)."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), key=RUBRIC_KEY, digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if cls == "pick":
        return "brief" if u < PICK_BRIEF_RATE else "explain"
    return "explain" if u < RUBRIC_RATES[cls] else "any"


def make_problem(uid: str, cls: str, terms: Sequence[int], ops: Sequence[str]) -> Problem:
    prompt = (PICK_TAG if cls == "pick" else "") + expression(terms, ops) + " ="
    result = steps_of(terms, ops)[-1][3]
    return Problem(uid=uid, prompt=prompt, answer=result,
                   meta={"class": cls, "rubric": rubric_of(cls, prompt), "terms": list(terms), "ops": list(ops)})


def _draw_chain(rng: random.Random, cls: str) -> tuple[list[int], list[str]]:
    n_terms = rng.choice(TERMS[cls])
    terms, ops = [rng.randrange(10)], []
    acc = terms[0]
    for _ in range(n_terms - 1):
        op, d = rng.choice(_moves(acc))
        ops.append(op)
        terms.append(d)
        acc = acc + d if op == "+" else acc - d
    return terms, ops


# ---- responses -----------------------------------------------------------------------------------

def style_of(response: str) -> tuple[str | None, int | None]:
    """(style, tagged answer) when the whole response is exactly one of the two styles (the
    explained one's sentence naming the tagged number), else (None, None)."""
    m = BRIEF.fullmatch(response)
    if m:
        return "brief", int(m.group(1))
    m = EXPLAINED.fullmatch(response)
    if m and m.group(1) == m.group(2):
        return "explain", int(m.group(2))
    return None, None


def final_answer(response: str) -> int | None:
    """The number in the last <answer> tag (None when there is none, or it holds no integer)."""
    found = _ANSWER.findall(response)
    if not found:
        return None
    try:
        return int(found[-1].strip())
    except ValueError:
        return None


class ChainStylesTask:
    """The bundled task (see the module's docstring)."""

    name = "chain_styles"
    repeats_problems = True  # t2 has 155 prompts: training and held-out draws share prompts

    def problems(self, split: str, count: int, seed: int) -> Sequence[Problem]:
        if split == "train":
            rng = random.Random(f"chain_styles/train/{seed}")
            out = []
            for i in range(count):
                cls = rng.choice(CLASSES)
                out.append(make_problem(f"chain_styles/train/{seed}/{i}", cls, *_draw_chain(rng, cls)))
            return out
        if split == "eval":
            return self._held_out(count, seed)
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    def _held_out(self, count: int, seed: int) -> list[Problem]:
        """`count` distinct prompts, the classes in turn; a class whose space is used up leaves its
        turn to the others."""
        if count > sum(CLASS_SIZES.values()):
            raise ValueError(f"chain_styles holds {sum(CLASS_SIZES.values())} distinct prompts; asked for {count}")
        rng = random.Random(f"chain_styles/eval/{seed}")
        seen: dict[str, set] = {c: set() for c in CLASSES}
        out: list[Problem] = []
        turn = 0
        while len(out) < count:
            cls = CLASSES[turn % len(CLASSES)]
            turn += 1
            if len(seen[cls]) == CLASS_SIZES[cls]:
                continue
            while True:
                terms, ops = _draw_chain(rng, cls)
                key = (tuple(terms), tuple(ops))
                if key not in seen[cls]:
                    seen[cls].add(key)
                    break
            out.append(make_problem(f"chain_styles/eval/{seed}/{len(out)}", cls, terms, ops))
        return out

    def score(self, problem: Problem, response: str) -> float:
        style, answer = style_of(response)
        if style is None or answer != problem.answer:
            return 0.0
        rubric = problem.meta["rubric"]
        return 1.0 if rubric == "any" or rubric == style else 0.0

    def extract_answer(self, problem: Problem, response: str) -> Hashable | None:
        return final_answer(response)

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        return [self.score(p, r) for p, r in zip(problems, responses)]


def make_task(name: str) -> ChainStylesTask:
    return ChainStylesTask()

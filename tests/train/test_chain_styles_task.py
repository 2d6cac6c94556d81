"""The bundled task chain_styles: its problem spaces, the held-out split of distinct prompts, the
hidden rubrics, and a scorer that a policy hunting for reward cannot game."""

import itertools
from collections import Counter

import pytest

from ia_train.errors import ConfigError
from ia_train.tasks import check_task, load_task, split_problems
from ia_train.tasks import chain_styles as cs


def all_chains(n_terms):
    """Every chain of n_terms one-digit terms whose partial sums stay in [-9, 9], by brute force."""
    for first in range(10):
        for rest in itertools.product(itertools.product("+-", range(10)), repeat=n_terms - 1):
            acc, ok = first, True
            for op, d in rest:
                acc = acc + d if op == "+" else acc - d
                ok = ok and -9 <= acc <= 9
            if ok:
                yield [first] + [d for _, d in rest], [op for op, _ in rest]


def test_class_sizes_are_the_number_of_distinct_prompts():
    counted = {n: sum(1 for _ in all_chains(n)) for n in (2, 3, 4)}
    assert cs.CLASS_SIZES["t2"] == counted[2] == 155
    assert cs.CLASS_SIZES["t3"] == counted[3] == 2440
    assert cs.CLASS_SIZES["t4"] == counted[4] == 38480
    assert cs.CLASS_SIZES["pick"] == counted[2] + counted[3]
    assert cs.CLASS_SIZES["t5"] == cs.chain_count(5) == 607042


def test_training_problems_are_valid_and_reproducible():
    task = load_task("chain_styles")
    problems = task.problems("train", 2000, 3)
    assert [p.prompt for p in problems[:50]] == [p.prompt for p in task.problems("train", 50, 3)]  # prefix-stable
    assert [p.prompt for p in problems[:50]] != [p.prompt for p in task.problems("train", 50, 4)]
    counts = Counter(p.meta["class"] for p in problems)
    assert set(counts) == set(cs.CLASSES) and min(counts.values()) > 330  # about 1/5 each
    for p in problems:
        terms, ops = p.meta["terms"], p.meta["ops"]
        assert len(terms) in cs.TERMS[p.meta["class"]] and all(0 <= t <= 9 for t in terms)
        assert all(-9 <= c <= 9 for _, _, _, c in cs.steps_of(terms, ops))
        assert p.answer == cs.steps_of(terms, ops)[-1][3]
        assert p.prompt == ("Q: " if p.meta["class"] == "pick" else "") + cs.expression(terms, ops) + " ="
        assert p.meta["rubric"] == cs.rubric_of(p.meta["class"], p.prompt)


def test_held_out_prompts_are_distinct_and_balanced():
    task = load_task("chain_styles")
    held = task.problems("eval", 200, 0)
    assert len({p.prompt for p in held}) == 200
    assert Counter(p.meta["class"] for p in held) == {c: 40 for c in cs.CLASSES}
    assert [p.prompt for p in held] == [p.prompt for p in task.problems("eval", 200, 0)]
    # more than a class holds: t2's 155 prompts are used up, the other classes take its turns
    many = task.problems("eval", 1000, 1)
    counts = Counter(p.meta["class"] for p in many)
    assert len({p.prompt for p in many}) == 1000 and counts["t2"] == 155 and sum(counts.values()) == 1000
    with pytest.raises(ValueError, match="distinct prompts"):
        task.problems("eval", sum(cs.CLASS_SIZES.values()) + 1, 0)
    # training never sees a held-out prompt
    train, held = split_problems(task, train=3000, held_out=200, seed=0)
    assert len(train) == 3000 and not {p.prompt for p in train} & {p.prompt for p in held}


def test_rubrics_are_fixed_per_prompt_at_the_class_rates():
    assert cs.rubric_of("t3", "1 + 2 - 3 =") == cs.rubric_of("t3", "1 + 2 - 3 =")
    for cls, n_terms in (("t3", 3), ("t4", 4)):
        rubrics = Counter(cs.make_problem("x", cls, t, o).meta["rubric"] for t, o in all_chains(n_terms))
        assert set(rubrics) == {"any", "explain"}
        assert rubrics["explain"] / sum(rubrics.values()) == pytest.approx(cs.RUBRIC_RATES[cls], abs=0.01)
    pick = Counter(cs.make_problem("x", "pick", t, o).meta["rubric"] for n in (2, 3) for t, o in all_chains(n))
    assert set(pick) == {"brief", "explain"}
    assert pick["brief"] / sum(pick.values()) == pytest.approx(cs.PICK_BRIEF_RATE, abs=0.03)


def problem(cls, rubric):
    """A problem of the class whose rubric is `rubric` (the first such chain)."""
    for n in cs.TERMS[cls]:
        for terms, ops in all_chains(n):
            p = cs.make_problem("x", cls, terms, ops)
            if p.meta["rubric"] == rubric:
                return p
    raise AssertionError(rubric)


def solutions(p):
    return cs.brief_solution(p.meta["terms"], p.meta["ops"]), cs.explained_solution(p.meta["terms"], p.meta["ops"])


def test_the_worked_solutions():
    assert cs.brief_solution([5, 4, 7], ["-", "-"]) == "5-4=1 1-7=-6\n<answer>-6</answer>"
    assert cs.explained_solution([5, 4, 7], ["-", "-"]) == \
        "Work left to right.\n5 - 4 = 1\n1 - 7 = -6\nSo the answer is -6.\n<answer>-6</answer>"
    assert cs.style_of("5-4=1 1-7=-6\n<answer>-6</answer>") == ("brief", -6)


@pytest.mark.parametrize("cls,rubric,brief_scores,explained_scores", [
    ("t3", "any", 1.0, 1.0), ("t4", "explain", 0.0, 1.0), ("pick", "brief", 1.0, 0.0), ("pick", "explain", 0.0, 1.0)])
def test_the_rubric_decides_which_style_counts(cls, rubric, brief_scores, explained_scores):
    task = load_task("chain_styles")
    p = problem(cls, rubric)
    brief, explained = solutions(p)
    assert task.score_batch([p, p], [brief, explained]) == [brief_scores, explained_scores]
    # a wrong answer never counts; the vote is the answer, whatever the rubric
    wrong = brief.replace(f"<answer>{p.answer}</answer>", f"<answer>{p.answer + 1}</answer>")
    assert task.score(p, wrong) == 0.0
    assert task.extract_answer(p, brief) == task.extract_answer(p, explained) == p.answer


def test_responses_hunting_for_reward_score_nothing():
    task = load_task("chain_styles")
    p = problem("t3", "any")
    brief, explained = solutions(p)
    a = p.answer
    tries = {
        "both styles in one response": explained + "\n" + brief,
        "both styles, brief first": brief + "\n" + explained,
        "two answer tags": brief + f"\n<answer>{a}</answer>",
        "the bare answer": f"<answer>{a}</answer>",
        "text after the tag": brief + " ok",
        "a trailing newline": brief + "\n",
        "text before": "hmm " + brief,
        "the sentence disagrees with the tag": explained.replace(f"So the answer is {a}.", f"So the answer is {a + 1}."),
        "the preamble without lines": f"Work left to right.\nSo the answer is {a}.\n<answer>{a}</answer>",
        "a guess in the tag": brief.replace(f"<answer>{a}</answer>", f"<answer>{a} or {a + 1}</answer>"),
        "an empty response": "",
    }
    for what, text in tries.items():
        assert task.score(p, text) == 0.0, what
    # the vote takes the last tag's number, so two tags vote with the last
    assert task.extract_answer(p, brief + f"\n<answer>{a + 1}</answer>") == a + 1
    assert task.extract_answer(p, "no tag") is None and task.extract_answer(p, "<answer>x</answer>") is None


def test_the_task_is_registered_and_takes_no_options():
    check_task("chain_styles", {})
    with pytest.raises(ConfigError, match="--task-options: chain_styles takes no options"):
        check_task("chain_styles", {"min_terms": 2})
    assert load_task("chain_styles").name == "chain_styles"

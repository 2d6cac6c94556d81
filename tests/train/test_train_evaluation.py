"""The before/after report of ia_train: per-problem pass@1, pass@k, maj@k against brute-force
enumeration of k-subsets (written independently here), and the bootstrap intervals."""

import itertools
import random
from collections import Counter

import pytest

from ia_train.evaluation.metrics import bootstrap_ci, change, summarize


def brute_pass_at_k(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_maj_at_k(answers, correct, k):
    """Vote over each k-subset among the responses that give an answer (None casts no vote); a subset
    without any answer is a wrong vote."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            continue
        best = max(votes.values())
        tied = [a for a, c in votes.items() if c == best]
        good = {answers[i] for i in range(len(answers)) if correct[i] and answers[i] is not None}
        total += sum(a in good for a in tied) / len(tied)
    return total / len(subsets)


@pytest.mark.parametrize("n,k", [(4, 1), (4, 2), (5, 3), (6, 6), (7, 3)])
def test_summary_matches_enumeration(n, k):
    rng = random.Random(100 * n + k)
    correct, answers, lengths = [], [], []
    for _ in range(6):
        truth = rng.choice([1, 2, 3])
        row = [rng.choice([1, 2, 3, None]) for _ in range(n)]
        answers.append(row)
        correct.append([a == truth for a in row])
        lengths.append([rng.randint(3, 40) for _ in range(n)])
    s = summarize(correct, answers, lengths, k)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert s["pass@1"] == pytest.approx(mean([sum(c) / n for c in correct]), abs=1e-12)
    assert s["pass@k"] == pytest.approx(mean([brute_pass_at_k(c, k) for c in correct]), abs=1e-12)
    assert s["maj@k"] == pytest.approx(mean([brute_maj_at_k(a, c, k) for a, c in zip(answers, correct)]), abs=1e-12)
    assert s["mean_tokens"] == pytest.approx(mean([mean(x) for x in lengths]))
    assert (s["k"], s["n"], s["problems"]) == (k, n, 6)
    for name in ("pass@1", "pass@k", "maj@k", "mean_tokens"):
        lo, hi = s[name + "_ci"]
        assert lo <= s[name] <= hi


def test_worked_example():
    correct = [[True, False, False, False], [True, True, True, True], [False, False, False, False]]
    answers = [[1, 2, 3, 4], [7, 7, 7, 7], [None, None, None, 5]]
    lengths = [[10, 20, 30, 40], [5, 5, 5, 5], [1, 1, 1, 1]]
    s = summarize(correct, answers, lengths, k=2)
    assert s["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert s["pass@k"] == pytest.approx((0.5 + 1 + 0) / 3)
    # problem 1: all answers differ, every pair ties, the right one is in half the pairs -> 1/4
    assert s["maj@k"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert s["mean_tokens"] == pytest.approx((25 + 5 + 1) / 3)


def test_a_response_without_an_answer_casts_no_vote():
    """Two responses without a final answer do not outvote one correct answer (they used to form one
    always-wrong "no answer" candidate that won this vote)."""
    s = summarize([[False, False, True]], [[None, None, 3]], [[80, 80, 9]], k=3)
    assert s["maj@k"] == 1.0 and s["curve"]["maj@2"] == pytest.approx(2 / 3)
    assert summarize([[False] * 4], [[None] * 4], [[80] * 4], k=2)["maj@k"] == 0.0  # nobody answers: wrong


def test_bootstrap_ci():
    lo, hi = bootstrap_ci([0.0] * 50 + [1.0] * 50)
    assert lo < 0.5 < hi and 0.1 < hi - lo < 0.3  # ~ +-1.96 * 0.05
    assert bootstrap_ci([0.25] * 10) == (0.25, 0.25)
    wide = bootstrap_ci([0.0, 1.0] * 5)
    narrow = bootstrap_ci([0.0, 1.0] * 500)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 4


def test_paired_change():
    lengths = [[3, 3]] * 4
    before = summarize([[False, False], [True, False], [False, False], [True, True]], [[1, 2], [1, 2], [3, 3], [4, 4]],
                       lengths, k=1)
    after = summarize([[True, False], [True, True], [False, False], [True, True]], [[1, 2], [1, 1], [3, 3], [4, 4]],
                      lengths, k=1)
    d = change(before, after)
    assert d["pass@1"] == pytest.approx(after["pass@1"] - before["pass@1"]) == pytest.approx(0.25)
    lo, hi = d["pass@1_ci"]
    assert 0 <= lo <= 0.25 <= hi <= 0.5  # per-problem changes are 0.5, 0.5, 0, 0
    assert d["mean_tokens"] == 0 and d["mean_tokens_ci"] == [0.0, 0.0]


def test_t_interval_over_seeds():
    """Three seeds' changes 0.216 / 0.286 / 0.321: the t interval [0.142, 0.407] (t_{0.975, 2} = 4.303),
    where a bootstrap over the seeds said [0.216, 0.326]."""
    from ia_train.evaluation.metrics import t_interval, t_quantile_975

    lo, hi = t_interval([0.216, 0.286, 0.321])
    assert (round(lo, 3), round(hi, 3)) == (0.142, 0.407)
    assert t_quantile_975(30) == 2.042 and abs(t_quantile_975(120) - 1.9799) < 1e-3  # tables: 1.980 at 120
    assert all(x != x for x in t_interval([0.5]))  # one value: no interval (NaN)
    with pytest.raises(ValueError, match="at least 2 values"):
        t_quantile_975(0)


def test_per_class_values_when_problems_have_classes():
    """With each problem's class (Problem.meta["class"]) the summary carries every per-problem value's
    mean per class, and the paired change per class."""
    correct = [[True, False], [True, True], [False, False], [False, True]]
    answers = [[1, 2], [7, 7], [None, 3], [4, 5]]
    lengths = [[10, 20], [5, 5], [80, 80], [30, 50]]
    classes = ["a", "b", "a", "b"]
    s = summarize(correct, answers, lengths, k=2, classes=classes)
    assert s["classes"] == classes and list(s["per_class"]) == ["a", "b"]
    assert s["per_class"]["a"]["problems"] == 2
    assert s["per_class"]["a"]["pass@1"] == pytest.approx((0.5 + 0) / 2)
    assert s["per_class"]["b"]["pass@k"] == pytest.approx((1 + 1) / 2) == s["per_class"]["b"]["pass@2"]
    assert s["per_class"]["a"]["mean_tokens"] == pytest.approx((15 + 80) / 2)
    after = summarize([[True, True]] * 4, answers, lengths, k=2, classes=classes)
    d = change(s, after)
    assert d["per_class"]["a"]["pass@1"] == pytest.approx(1 - 0.25) and d["per_class"]["b"]["pass@1"] == pytest.approx(0.25)
    assert "per_class" not in summarize(correct, answers, lengths, k=2)
    with pytest.raises(ValueError, match="classes has 3 entries for 4 problems"):
        summarize(correct, answers, lengths, k=2, classes=classes[:3])


def test_the_evaluation_reads_classes_from_the_problems():
    from ia_train.evaluation.sampling import problem_classes
    from ia_train.tasks import Problem

    assert problem_classes([Problem("1", "p", 1, {"class": "t2"}), Problem("2", "q", 2, {"class": "pick"})]) == \
        ["t2", "pick"]
    assert problem_classes([Problem("1", "p", 1, {"class": "t2"}), Problem("2", "q", 2, {})]) is None
    assert problem_classes([]) is None

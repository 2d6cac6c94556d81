"""HumanEval through the sandbox: canonical solutions pass, wrong ones fail, responses become programs."""

import dataclasses
import sys

import pytest

from ia_train.sandbox import SandboxUnavailable
from ia_train.tasks.humaneval import (
    DEFAULT_LIMITS,
    TASK_NAMES,
    HumanEvalTask,
    build_program,
    dataset_paths,
    extract_code,
    make_task,
    solution_source,
    check_source,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(scope="module")
def task():
    t = HumanEvalTask(limits=dataclasses.replace(DEFAULT_LIMITS, cpu_seconds=3), workers=4)
    yield t
    t.close()


@pytest.fixture(scope="module")
def sample(task):
    # 10 problems spread over the set; HumanEval/32 has a helper function in its prompt.
    by_uid = {p.uid: p for p in task.problems("train", 100, 0) + task.problems("eval", 0, 0)}
    return [by_uid[f"HumanEval/{i}"] for i in (0, 2, 11, 32, 53, 78, 101, 120, 145, 163)]


def test_names_and_splits():
    assert TASK_NAMES == ("humaneval",)
    t = make_task("humaneval")
    train = {p.uid for p in t.problems("train", 250, 1)}
    held_out = {p.uid for p in t.problems("eval", 0, 1)}
    assert len(train) == 100 and len(held_out) == 64 and not train & held_out
    with pytest.raises(ValueError, match="unknown code task"):
        make_task("mbpp")


def test_all_canonical_solutions_pass(task):
    problems = task.problems("train", 100, 0) + task.problems("eval", 0, 0)
    assert len({p.uid for p in problems}) == 164
    results = task.run(problems, [p.meta["canonical_solution"] for p in problems])
    failed = {p.uid: r.reason for p, r in zip(problems, results) if not r.passed}
    assert not failed
    assert all("proof" in r.reason for r in results)


def test_tests_and_dataset_are_out_of_the_solutions_reach(task, sample):
    p = sample[0]
    path = dataset_paths()[0]
    probe = (
        "    import os, sys\n"
        f"    print('dataset', os.listdir({path!r}) if os.path.isdir({path!r}) else 'absent', flush=True)\n"
        "    print('argv', sys.argv, flush=True)\n"
        "    return True\n"
    )
    result = task.run([p], [probe])[0]
    assert result.status == "failed"
    # Covered by an empty mount (the interpreter's own site-packages), or not there at all (outside
    # the system's directories, everything is hidden).
    assert "dataset []" in result.stdout or "dataset absent" in result.stdout, result.stdout
    assert "check(" not in result.stdout and "def check" not in result.stdout


def test_full_functions_in_fences_pass(task, sample):
    responses = [
        f"Sure! Here is the function:\n\n```python\n{p.meta['code_prompt']}{p.meta['canonical_solution']}```\n"
        "It works by iterating."
        for p in sample[:4]
    ]
    assert task.score_batch(sample[:4], responses) == [1.0] * 4


def test_wrong_solutions_fail(task, sample):
    p = sample[0]  # has_close_elements -> bool
    responses = [
        "    return True\n",  # wrong for some inputs
        "    return not (\n",  # syntax error
        "    while True:\n        pass\n",  # never returns
        "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```",  # full, wrong
        "    import os\n    os.kill(os.getpid(), 9)\n",  # dies
        "",  # nothing
    ]
    results = task.run([p] * len(responses), responses)
    assert [r.status for r in results] == ["failed", "failed", "timeout", "failed", "failed", "failed"]
    assert "AssertionError" in results[0].reason
    assert "SyntaxError" in results[1].reason or "IndentationError" in results[1].reason
    assert task.score_batch([p] * len(responses), responses) == [0.0] * len(responses)


def test_a_completion_too_large_for_the_scratch_space_scores_zero(task, sample):
    """A response larger than the run's private /tmp cannot be written there: a failed run (reward 0),
    not a missing mount namespace (which raised SandboxUnavailable and ended the training run)."""
    p = sample[0]
    huge = "    # " + "x" * (DEFAULT_LIMITS.disk_bytes + (1 << 20)) + "\n    return True\n"
    assert task.score_batch([p, p], [huge, p.meta["canonical_solution"]]) == [0.0, 1.0]
    result = task.run([p], [huge])[0]
    assert result.status == "failed" and "do not fit in its scratch space" in result.reason


def test_broken_sandbox_raises_instead_of_scoring_zero(sample):
    broken = HumanEvalTask(python="/nonexistent/python3", workers=1)
    try:
        # The self-test, before the first completion is scored.
        with pytest.raises(SandboxUnavailable, match="sandbox failed its self-test.*nonexistent"):
            broken.score_batch(sample[:1], [sample[0].meta["canonical_solution"]])
    finally:
        broken.close()


def test_program_building():
    p = next(q for q in make_task("humaneval").problems("eval", 0, 0) + make_task("humaneval").problems("train", 100, 0)
             if q.uid == "HumanEval/32")
    body = build_program(p, "    return 0.0\n")
    assert body.startswith(p.meta["code_prompt"] + "    return 0.0\n")
    assert body.rstrip().endswith("check(find_zero)")
    full = build_program(p, "```python\ndef find_zero(xs):\n    return 0.0\n```")
    assert "def poly(" in full  # the prompt's helper stays available
    assert full.count("def find_zero(") == 2  # stub, then the response's definition overriding it
    assert extract_code("```py\nx = 1\n```\n```python\ndef f(a):\n    return a\n```", "f").startswith("def f(a)")
    assert extract_code("plain text", "f") == "plain text"
    # Scoring: the solution module (prompt and response) and the trusted tests, kept apart.
    assert solution_source(p, "    return 0.0\n") == p.meta["code_prompt"] + "    return 0.0\n"
    tests = check_source(p)
    assert "def poly(" in tests and "def check(" in tests and "return 0.0" not in tests
    assert extract_code("```python\ndef f():\n    return 1\n", "f") == "def f():\n    return 1\n"  # unterminated


def test_majority_keys_ignore_formatting(task, sample):
    p = sample[0]
    a = task.extract_answer(p, "```python\ndef f(x):\n    return x+1  # add one\n```")
    b = task.extract_answer(p, "```python\ndef f(x):\n\n    return x + 1\n```")
    c = task.extract_answer(p, "```python\ndef f(x):\n    return x + 2\n```")
    assert a == b and a != c
    assert task.extract_answer(p, "```python\ndef f(:\n```") is None
    # Bodies completing the prompt vote too (they parse once put after the signature).
    body = p.meta["canonical_solution"]
    assert task.extract_answer(p, body) is not None
    assert task.extract_answer(p, body) == task.extract_answer(p, body.replace("    return False", "    return  False"))
    assert task.extract_answer(p, body) != task.extract_answer(p, "    return True\n")

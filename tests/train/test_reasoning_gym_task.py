"""reasoning-gym tasks: where a response's final answer is read (the last <answer> tag, or with
answer_format: last_number the last number, for small models that ignore the tag instruction)."""

import pytest

from ia_train.tasks import load_task


def problem(options):
    return load_task("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, **options}) \
        .problems("eval", 1, 0)[0]


def test_tag_format_reads_the_last_tag_only():
    task = load_task("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    p = task.problems("eval", 1, 0)[0]
    right = int(p.answer)
    assert p.prompt.endswith("Give your final answer inside <answer></answer> tags.")
    assert task.score(p, f"so <answer>{right}</answer>") == 1.0
    assert task.score(p, f"{right}") == 0.0  # no tag, no answer
    assert task.score(p, f"<answer>{right}</answer> or <answer>{right + 1}</answer>") == 0.0  # the last one counts
    assert task.extract_answer(p, f"<answer> {right} </answer>") == right


def test_last_number_format_reads_the_last_number():
    task = load_task("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                  "answer_format": "last_number"})
    p = task.problems("eval", 1, 0)[0]
    right = int(p.answer)
    assert p.prompt.endswith("End your reply with the final answer as a number.")
    assert task.score(p, f"The answer is {right}.") == 1.0
    # writing many numbers gains nothing: one final answer, the last
    assert task.score(p, f"{right} or {right + 1}") == 0.0
    assert task.score(p, "no idea") == 0.0 and task.extract_answer(p, "no idea") is None
    assert task.extract_answer(p, f"= -{right}") == -right


def test_an_unknown_answer_format_is_named():
    with pytest.raises(ValueError, match="answer_format must be one of tag, last_number, got 'json'"):
        load_task("products", {"answer_format": "json"})

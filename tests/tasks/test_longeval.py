"""The LongEval lines generator, its metric, and an evaluate() smoke run."""

import re

import pytest

from harness.byte_tokenizer import ByteTokenizer
from tasks import longeval
from tests.conftest import tiny_model

TOKENIZER = ByteTokenizer()
# The reference line format: "line <adjective>-<noun>: REGISTER_CONTENT is <number>" (brackets literal).
LINE_RE = re.compile(r"^line ([a-z]+-[a-z]+): REGISTER_CONTENT is <(\d+)>$", re.M)


def _text(sample):
    return TOKENIZER.decode(sample.input_ids)


@pytest.mark.parametrize("num_lines", [1, 20, 200])
def test_sample_has_num_lines_distinct_lines_in_the_reference_format(num_lines):
    sample = longeval.make_sample(TOKENIZER, "raw", num_lines, seed=0, index=3)
    text = _text(sample)
    lines = LINE_RE.findall(text)
    assert len(lines) == num_lines == len({name for name, _ in lines})
    assert [name for name, _ in lines] == sample.names
    assert [int(number) for _, number in lines] == sample.numbers
    assert all(longeval.MIN_NUMBER <= n <= longeval.MAX_NUMBER for n in sample.numbers)
    assert text.startswith(longeval.PREAMBLE)
    # As in the reference: the last line, an empty line, then the question.
    question = longeval.QUESTION.format(name=sample.names[sample.line])
    assert text.endswith(f"REGISTER_CONTENT is <{sample.numbers[-1]}>\n\n{question}")


def test_the_asked_line_holds_the_expected_number():
    for index in range(5):
        sample = longeval.make_sample(TOKENIZER, "raw", 50, seed=0, index=index)
        text = _text(sample)
        asked = re.search(r"in line (\S+)\? I need the number\.$", text).group(1)
        assert asked == sample.names[sample.line]
        assert f"line {asked}: REGISTER_CONTENT is <{sample.expected}>\n" in text
        assert 0.0 <= sample.depth < 1.0


def test_samples_are_a_pure_function_of_their_inputs():
    a = longeval.make_sample(TOKENIZER, "raw", 100, seed=0, index=1)
    longeval.make_sample(TOKENIZER, "raw", 200, seed=5, index=7)
    assert longeval.make_sample(TOKENIZER, "raw", 100, seed=0, index=1) == a
    others = [longeval.make_sample(TOKENIZER, "raw", 100, seed=0, index=i).input_ids for i in range(5)]
    assert len({tuple(ids) for ids in others}) == 5
    assert longeval.make_sample(TOKENIZER, "raw", 100, seed=1, index=1) != a


def test_too_many_lines_are_refused():
    with pytest.raises(ValueError, match="lines"):
        longeval.make_sample(TOKENIZER, "raw", len(longeval.ADJECTIVES) * len(longeval.NOUNS) + 1, 0, 0)


@pytest.mark.parametrize("answer,correct", [
    ("The <REGISTER_CONTENT> in line tall-eraser is <2416>.", True), ("2416", True), ("<2416>", True),
    ("2416 or maybe 17", False), ("24160", False), ("no digits", False), ("", False),
])
def test_score_is_the_last_integer(answer, correct):
    assert longeval.score(answer, 2416) is correct


def test_task_builds_rows_and_evaluates_on_a_tiny_model():
    task = longeval.LongEvalTask([3], samples=1, tokenizer=TOKENIZER, prompt_template="raw", seed=0,
                                 max_new_tokens=4)
    task_input = task.build_input(3, 0)
    sample = longeval.make_sample(TOKENIZER, "raw", 3, 0, 0)
    assert task_input.input_ids == sample.input_ids
    assert task_input.info == {"expected": sample.expected, "line": sample.line, "depth": round(sample.depth, 4)}
    row = task.evaluate(tiny_model(), task_input)
    assert row["score"] in (0.0, 1.0)
    assert isinstance(row["answer"], str)
    assert set(row) | set(task_input.info) <= set(task.columns) | {"score"}


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        longeval.LongEvalTask([200], samples=1, tokenizer=TOKENIZER, max_tokens=5)

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


@pytest.mark.parametrize("answer,rule,complete", [
    ("<2416>", "integer", True), ("The number is 2416.", "integer", True), ("The number is 2416", "integer", False),
    ("<24", "integer", False), ("no digits yet\n", "integer", False),
    ("<2416>\n", "newline", True), ("\n\n<2416>", "newline", False), ("  <2416> and more", "newline", False),
    ("<2416>", None, False), ("<2416>\n", None, False),
])
def test_answer_complete(answer, rule, complete):
    assert longeval.answer_complete(answer, rule) is complete


def test_stop_at_is_checked_and_leaves_the_default_hash_alone(tmp_path):
    """stop_at came after LongChat's protocol (and any rows): at null the config hashes as before it existed."""
    from omegaconf import open_dict

    from harness.errors import HarnessError
    from harness.job import results_path
    from tests.test_runner import config

    default = config(tmp_path, task="longeval")
    assert default.task.stop_at is None
    before = config(tmp_path, task="longeval")
    with open_dict(before):
        del before.task["stop_at"]  # the config as it was before the option
    assert results_path(default)[1] == results_path(before)[1]
    assert results_path(config(tmp_path, "task.stop_at=integer", task="longeval"))[1] != results_path(default)[1]
    with pytest.raises(HarnessError, match="^task.stop_at must be null, integer or newline, got 'digit'"):
        longeval.LongEvalTask([3], samples=1, tokenizer=TOKENIZER, stop_at="digit")


def test_generation_stops_when_the_rule_says_so(monkeypatch):
    """greedy_generate ends as soon as ``stop`` returns True (on the tiny model: after exactly 3 tokens,
    of 20 allowed); the task hands it its rule on the decoded answer."""
    from tasks.base import greedy_generate

    seen = []

    def stop(ids):
        seen.append(list(ids))
        return len(ids) >= 3

    new = greedy_generate(tiny_model(), list(range(10, 30)), 20, stop=stop)
    assert len(new) == 3 and seen[-1] == new
    handed = {}

    def fake_generate(model, input_ids, max_new_tokens, eos_token_id, stop=None):
        handed["stop"] = stop
        return TOKENIZER.encode("<2416>")

    monkeypatch.setattr(longeval, "greedy_generate", fake_generate)
    task = longeval.LongEvalTask([3], samples=1, tokenizer=TOKENIZER, stop_at="integer")
    task_input = task.build_input(3, 0)
    task.evaluate(None, task_input)
    assert handed["stop"](TOKENIZER.encode("<2416>")) and not handed["stop"](TOKENIZER.encode("<24"))
    longeval.LongEvalTask([3], samples=1, tokenizer=TOKENIZER).evaluate(None, task_input)
    assert handed["stop"] is None  # the default: LongChat's full generation

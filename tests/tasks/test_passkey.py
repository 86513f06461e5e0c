"""The passkey generator and metric."""

import pytest

from harness.byte_tokenizer import ByteTokenizer
from tasks import passkey

TOKENIZER = ByteTokenizer()


@pytest.mark.parametrize("length", [300, 1000, 4096])
def test_sample_fits_the_length_and_contains_the_needle(length):
    sample = passkey.make_sample(TOKENIZER, "raw", length, seed=0, index=3)
    assert length - len(passkey.FILLER) - 2 <= sample.length == len(sample.input_ids) <= length
    text = TOKENIZER.decode(sample.input_ids)
    assert passkey.NEEDLE.format(key=sample.key) in text
    assert 1 <= sample.key <= 10**7
    assert text.endswith(passkey.ANSWER_PREFIX)
    assert 0.0 <= sample.depth <= 1.0


def test_samples_are_a_pure_function_of_their_inputs():
    a = passkey.make_sample(TOKENIZER, "raw", 1000, seed=0, index=1)
    passkey.make_sample(TOKENIZER, "raw", 2000, seed=5, index=7)
    assert passkey.make_sample(TOKENIZER, "raw", 1000, seed=0, index=1) == a
    others = {passkey.make_sample(TOKENIZER, "raw", 1000, seed=0, index=i).key for i in range(5)}
    assert len(others) == 5  # different indices give different keys (and depths)


def test_depth_follows_the_needle():
    sample = passkey.make_sample(TOKENIZER, "raw", 3000, seed=1, index=0)
    text = TOKENIZER.decode(sample.input_ids)
    at = text.index(passkey.NEEDLE.format(key=sample.key)) / len(text)
    assert abs(at - sample.depth) < 0.1


def test_chosen_depths_keep_the_random_samples_keys():
    """task.depths: sample i at depths[i % D] (to within one filler sentence), same key as the
    random-depth sample i, a different input for every depth."""
    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    samples = [passkey.make_sample(TOKENIZER, "raw", 3000, seed=1, index=i, depth=depths[i % 5]) for i in range(10)]
    for i, sample in enumerate(samples):
        assert sample.key == passkey.make_sample(TOKENIZER, "raw", 3000, seed=1, index=i).key
        assert abs(sample.depth - depths[i % 5]) < 0.02
        text = TOKENIZER.decode(sample.input_ids)
        at = text.index(passkey.NEEDLE.format(key=sample.key)) / len(text)
        assert abs(at - depths[i % 5]) < 0.1
    assert len({tuple(s.input_ids) for s in samples}) == 10


def test_depths_option_is_checked_and_leaves_the_default_hash_alone(tmp_path):
    from harness.errors import HarnessError
    from harness.job import results_path
    from tests.test_runner import config

    default = results_path(config(tmp_path))[1]
    assert results_path(config(tmp_path, "task.depths=null"))[1] == default  # committed files stay resumable
    chosen = config(tmp_path, "task.depths=[0,0.5,1]")
    assert results_path(chosen)[1] != default
    with pytest.raises(HarnessError, match="^task.depths must be null or a list of fractions"):
        passkey.PasskeyTask([1000], 2, TOKENIZER, depths=[0.5, 2])
    task = passkey.PasskeyTask([1000], 4, TOKENIZER, depths=[0.25, 0.75])
    got = [task.build_input(1000, i).info["depth"] for i in range(4)]
    assert all(abs(d - want) < 0.03 for d, want in zip(got, [0.25, 0.75, 0.25, 0.75]))


def test_too_short_length_is_refused():
    with pytest.raises(ValueError, match="shorter than the prompt"):
        passkey.make_sample(TOKENIZER, "raw", 50, seed=0, index=0)


@pytest.mark.parametrize("answer,correct", [
    (" 1234567. Remember it.", True), ("1234567", True), ("12345678", False), ("The key is 7 then 1234567", False),
    ("no digits", False), ("", False),
])
def test_score_is_the_first_integer(answer, correct):
    assert passkey.score(answer, 1234567) is correct

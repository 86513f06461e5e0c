"""Dynamic-NTK against transformers' own definition, and free of state between inputs."""

import copy

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.errors import HarnessError
from harness.methods import apply_method
from harness.methods.dynamic_ntk import dynamic_ntk_inv_freq
from tests.conftest import TRAIN_LENGTH, random_ids, tiny_model


@pytest.mark.parametrize("length", [64, 128, 129, 300, 1000])
@pytest.mark.parametrize("factor", [1.5, 2.0, 4.0])
def test_inv_freq_matches_transformers(length, factor):
    config = copy.deepcopy(tiny_model().config)
    config.rope_parameters = {"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0}
    expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=max(length, TRAIN_LENGTH))
    got = dynamic_ntk_inv_freq(10000.0, 16, length, TRAIN_LENGTH, factor)
    torch.testing.assert_close(got, expected)


def test_model_matches_stock_dynamic_model_on_a_fresh_long_input():
    ids = random_ids(3 * TRAIN_LENGTH)
    stock = tiny_model(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    ours = apply_method(tiny_model(), "dynamic-ntk", factor=2.0)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, stock(ids).logits, atol=1e-4, rtol=1e-4)


def test_no_state_leaks_from_a_long_input_to_a_shorter_one():
    """transformers' stock dynamic module keeps the larger base for a shorter next input (> T)."""
    long_ids, short_ids = random_ids(4 * TRAIN_LENGTH), random_ids(2 * TRAIN_LENGTH, seed=2)
    fresh = apply_method(tiny_model(), "dynamic-ntk")
    used = apply_method(tiny_model(), "dynamic-ntk")
    with torch.no_grad():
        used(long_ids)
        torch.testing.assert_close(used(short_ids).logits, fresh(short_ids).logits)


def test_cached_decoding_is_not_exact_past_training_length():
    """Documented behaviour: cached keys keep the base they were rotated with, so decoding past T
    differs (slightly) from recomputing the whole sequence at the new length."""
    ids = random_ids(2 * TRAIN_LENGTH + 1)
    model = apply_method(tiny_model(), "dynamic-ntk")
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], cache=out.cache, use_cache=True).logits[0, -1]
        full = model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(step, full, atol=1e-4)


def test_bad_factor():
    with pytest.raises(HarnessError, match="factor"):
        apply_method(tiny_model(), "dynamic-ntk", factor=0.5)

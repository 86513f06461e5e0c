"""Every method equals Origin inside the training length / window, on every covered architecture,
in prefill and in cached decoding; beyond it, the methods really differ (the guard)."""

import pytest
import torch
from transformers import DynamicCache

from harness.methods import METHODS, apply_method
from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, method_arch_pairs, random_ids, supports, tiny_model

DECODE_STEPS = 4


@torch.no_grad()
def prefill_and_decode(model, ids, steps=DECODE_STEPS):
    """Greedy decoding with a KV cache; returns the logits of the prefill and of each decode step."""
    cache = DynamicCache()
    out = model(input_ids=ids, cache=cache, use_cache=True)
    logits = [out.logits[0]]
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(input_ids=token, cache=out.cache, use_cache=True)
        logits.append(out.logits[0])
        token = out.logits[:, -1:].argmax(-1)
    return logits


@pytest.mark.parametrize("method,arch", method_arch_pairs())
def test_method_equals_origin_inside_training_length(arch, method):
    # 24 prompt + 4 decoded tokens: shorter than the ReRoPE window (32) and Mesa's chunking threshold.
    ids = random_ids(24)
    expected = prefill_and_decode(tiny_model(arch), ids)
    model = apply_method(tiny_model(arch), method, **TINY_PARAMS[method])
    got = prefill_and_decode(model, ids)
    for step, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m: f"{method} step {step}: {m}")


@pytest.mark.parametrize("method", list(METHODS))
def test_method_equals_origin_just_below_training_length(method):
    """ReRoPE's window is what matters for ReRoPE; Mesa starts chunking at T - reserve_new_tokens."""
    params = dict(TINY_PARAMS[method])
    if "window" in params:
        params["window"] = TRAIN_LENGTH
    length = TRAIN_LENGTH - params.get("reserve_new_tokens", 0) - 1
    ids = random_ids(length)
    expected = tiny_model()(ids).logits
    got = apply_method(tiny_model(), method, **params)(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "origin"])
def test_methods_differ_from_origin_beyond_training_length(method):
    """Guard: the equalities above are not vacuous; past T every method changes the logits."""
    ids = random_ids(3 * TRAIN_LENGTH)
    origin = tiny_model()(ids).logits[0, -TRAIN_LENGTH:]
    got = apply_method(tiny_model(), method, **TINY_PARAMS[method])(ids).logits[0, -TRAIN_LENGTH:]
    assert (got - origin).abs().max() > 0.5


def assert_origin_until(arch, method, boundary, **params):
    """``method`` gives Origin's logits at positions < ``boundary`` (its window or cache) and
    clearly others after it, on a 3T-token input."""
    ids = random_ids(3 * TRAIN_LENGTH)
    with torch.no_grad():
        origin = tiny_model(arch)(ids).logits[0]
        got = apply_method(tiny_model(arch), method, **params)(ids).logits[0]
    torch.testing.assert_close(got[:boundary], origin[:boundary], atol=1e-4, rtol=1e-4)
    assert (got[boundary:] - origin[boundary:]).abs().max() > 0.5


def test_generate_works_for_every_method(arch):
    ids = random_ids(3 * TRAIN_LENGTH)
    for method in METHODS:
        if not supports(method, arch):
            continue
        model = apply_method(tiny_model(arch), method, **TINY_PARAMS[method])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                             do_sample=False)
        assert out.shape == (1, ids.shape[1] + 5), method

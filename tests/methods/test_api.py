"""apply_method: cached decoding, isolation between models, parameters and clear errors."""

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from harness.errors import HarnessError, UnsupportedModelError
from harness.methods import METHODS, apply_method, method_parameters, remove_method
from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, method_arch_pairs, random_ids, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method,arch",
                         method_arch_pairs([m for m, cls in METHODS.items() if cls.cached_decoding == "exact"]))
def test_cached_decoding_equals_full_recomputation(method, arch):
    """Past the training length too, for every method that says so (ReRoPE's positions depend only
    on (t, j), so caching is exact). tests/test_architectures.py decodes across LongRoPE's switch."""
    model = apply_method(tiny_model(arch), method, **TINY_PARAMS[method])
    steps, full = decode_vs_recompute(model, random_ids(2 * TRAIN_LENGTH + 4), 2 * TRAIN_LENGTH)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


def decode_vs_recompute(model, ids, prompt):
    """The last-position logits of each cached decoding step after a prefill of ``prompt`` tokens,
    and those of recomputing every prefix at once: (steps, full), both (len(ids) - prompt, vocab)."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt], use_cache=True)
        steps = [out.logits[0, -1]]
        for i in range(prompt, ids.shape[1] - 1):
            out = model(input_ids=ids[:, i : i + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits[0, -1])
        full = model(input_ids=ids[:, :-1]).logits[0, prompt - 1 :]
    return torch.stack(steps), full


def test_applying_a_method_leaves_another_model_untouched():
    ids = random_ids(3 * TRAIN_LENGTH)
    with torch.no_grad():
        reference = tiny_model()(ids).logits
        mesa_alone = apply_method(tiny_model(), "mesa", **TINY_PARAMS["mesa"])(ids).logits
        a = apply_method(tiny_model(), "mesa", **TINY_PARAMS["mesa"])
        b = tiny_model()
        c = apply_method(tiny_model(), "rerope", **TINY_PARAMS["rerope"])
        rerope_alone = apply_method(tiny_model(), "rerope", **TINY_PARAMS["rerope"])(ids).logits
        torch.testing.assert_close(b(ids).logits, reference)
        torch.testing.assert_close(a(ids).logits, mesa_alone)
        torch.testing.assert_close(c(ids).logits, rerope_alone)
        torch.testing.assert_close(b(ids).logits, reference)


def test_reapplying_replaces_and_remove_restores():
    ids = random_ids(3 * TRAIN_LENGTH)
    model = tiny_model()
    with torch.no_grad():
        reference = model(ids).logits
        apply_method(model, "mesa", **TINY_PARAMS["mesa"])
        apply_method(model, "rerope", **TINY_PARAMS["rerope"])
        rerope_alone = apply_method(tiny_model(), "rerope", **TINY_PARAMS["rerope"])(ids).logits
        torch.testing.assert_close(model(ids).logits, rerope_alone)
        apply_method(model, "dynamic-ntk")
        remove_method(model)
        torch.testing.assert_close(model(ids).logits, reference)
    assert model.harness_method_name is None


def test_train_length_defaults_to_the_models():
    model = tiny_model()
    model.harness_train_length = 100
    apply_method(model, "rerope", window=16)
    assert model.model.harness_method.train_length == 100
    apply_method(tiny_model(), "rerope", window=16)  # falls back to max_position_embeddings


def test_parameter_names_are_shared_with_the_configs():
    assert set(method_parameters("mesa")) >= {
        "train_length", "first_chunk", "last_chunk", "stair_width", "reserve_new_tokens", "variant", "logn",
    }
    assert set(method_parameters("leaky-rerope")) >= {"train_length", "window", "leaky_k", "logn"}
    assert set(method_parameters("dynamic-ntk")) == {"train_length", "factor"}


def test_unknown_method_and_parameter():
    with pytest.raises(HarnessError, match="unknown method 'no-such-method'.*origin"):
        apply_method(tiny_model(), "no-such-method")
    with pytest.raises(HarnessError, match="unknown parameter.*windw.*accepted"):
        apply_method(tiny_model(), "rerope", windw=3)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "origin"])
def test_unsupported_model_names_type_and_method(method):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match=f"{method}.*gpt2"):
        apply_method(gpt2, method)


def test_sliding_window_models_are_refused_for_weave_methods():
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        apply_method(tiny_model("mistral", sliding_window=64), "mesa", **TINY_PARAMS["mesa"])


def test_padded_batches_are_refused():
    model = apply_method(tiny_model(), "rerope", **TINY_PARAMS["rerope"])
    ids = random_ids(10)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(HarnessError, match="padded"):
        model(input_ids=ids, attention_mask=mask)


# -- method.length_scale --------------------------------------------------------------------------
def test_length_scale_multiplies_the_settings_in_tokens_only():
    from omegaconf import OmegaConf

    from harness.methods import method_settings

    cfg = OmegaConf.load(ROOT / "conf" / "method" / "mesa.yaml")
    cfg.length_scale = 4
    name, params = method_settings(cfg)
    defaults = METHODS["mesa"].parameters()
    for key in METHODS["mesa"].length_params:
        assert params[key] == 4 * defaults[key]
    assert params["reserve_new_tokens"] == defaults["reserve_new_tokens"]  # generation budget: not a training length
    assert params["train_length"] is None and "length_scale" not in params


def test_length_scale_of_every_method_names_its_own_parameters():
    for cls in METHODS.values():
        assert set(cls.length_params) <= set(cls.parameters()), cls.name


@pytest.mark.parametrize("scale", [0, -2, "x", True])
def test_a_bad_length_scale_is_one_line(scale):
    from harness.methods.method import scale_lengths

    with pytest.raises(HarnessError, match="length_scale must be a positive number"):
        scale_lengths("mesa", {}, scale)


def test_length_scale_on_a_method_without_settings_in_tokens_is_refused():
    from harness.methods.method import scale_lengths

    with pytest.raises(HarnessError, match="no settings in tokens"):
        scale_lengths("origin", {}, 2)

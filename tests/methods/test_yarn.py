"""YaRN against a naive definition written from the paper, equal to Origin below T when dynamic,
exact cached decoding when static, undo, and one-line refusals."""

import math

import pytest
import torch

from harness.errors import HarnessError, UnsupportedModelError
from harness.methods import apply_method, remove_method
from harness.methods.method import decoder_of
from tests.conftest import TRAIN_LENGTH, archs_for, random_ids, tiny_model
from tests.methods.test_api import decode_vs_recompute
from tests.methods.test_parity import prefill_and_decode

YARN_ARCHS = archs_for("yarn")


def paper_ramp(base: float, rotary_dim: int, train_length: int, alpha: float = 1.0, beta: float = 32.0,
               ramp: str = "code") -> tuple[torch.Tensor, torch.Tensor]:
    """(theta, gamma), both (rotary_dim / 2,) float64: theta_i = base^(-2i/D), and the share gamma of
    pair i kept un-interpolated, from its r_i = T / lambda_i with wavelength lambda_i = 2 pi / theta_i.

    ramp "paper": gamma(r) = clamp((r - alpha) / (beta - alpha), 0, 1), the paper's text.
    ramp "code": what the authors' code and transformers do. gamma is linear in the pair index i,
    not in r, between the (real) indices where r_i = beta and r_i = alpha, i(r) = D ln(T / (2 pi r)) / (2 ln base),
    solved from r_i's definition; with ``truncate`` (their default) those indices are rounded outwards
    (floor at beta, ceil at alpha) and clipped to [0, D - 1] (D, not D/2 - 1: the code's clip).
    """
    i = torch.arange(rotary_dim // 2, dtype=torch.float64)
    theta = base ** (-2 * i / rotary_dim)
    r = train_length / (2 * math.pi / theta)
    if ramp == "paper":
        return theta, ((r - alpha) / (beta - alpha)).clamp(0, 1)

    def index_where_r_is(value):
        return rotary_dim * math.log(train_length / (2 * math.pi * value)) / (2 * math.log(base))

    low = max(math.floor(index_where_r_is(beta)), 0)
    high = min(math.ceil(index_where_r_is(alpha)), rotary_dim - 1)
    return theta, ((high - i) / (high - low)).clamp(0, 1)


def paper_yarn(base: float, rotary_dim: int, train_length: int, s: float, alpha: float = 1.0, beta: float = 32.0,
               ramp: str = "code") -> tuple[torch.Tensor, float]:
    """(h(theta) (rotary_dim / 2,) float64, sqrt(1/t)): h(theta) = (1 - gamma) theta / s + gamma theta and
    sqrt(1/t) = 0.1 ln s + 1, which multiplies both q and k (cos and sin), so the logits get 1/t."""
    theta, gamma = paper_ramp(base, rotary_dim, train_length, alpha, beta, ramp)
    return (1 - gamma) * theta / s + gamma * theta, (0.1 * math.log(s) + 1 if s > 1 else 1.0)


def yarn_rotary(model):
    return model.model.rotary_emb


# -- 1. parity with the paper's definition ---------------------------------------------------------
SHAPES = {  # name: (model overrides, base, rotary dim, T)
    "tiny": (dict(), 10000.0, 16, TRAIN_LENGTH),
    "tiny-phi3-partial": (dict(arch="phi3"), 10000.0, 8, TRAIN_LENGTH),
    "llama2-like": (dict(head_dim=128, max_position_embeddings=4096), 10000.0, 128, 4096),
    "llama3-like": (dict(head_dim=128, max_position_embeddings=8192, rope_theta=500000.0), 500000.0, 128, 8192),
}


@pytest.mark.parametrize("betas", [(32.0, 1.0), (16.0, 2.0)])
@pytest.mark.parametrize("factor", [1.5, 2.0, 4.0, 16.0])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_static_frequencies_and_factor_match_the_paper(shape, factor, betas):
    overrides, base, rotary_dim, train_length = SHAPES[shape]
    model = apply_method(tiny_model(**overrides), "yarn", factor=factor, beta_fast=betas[0], beta_slow=betas[1])
    inv_freq, scaling = yarn_rotary(model).frequencies(1, torch.device("cpu"))
    expected, expected_scaling = paper_yarn(base, rotary_dim, train_length, factor, alpha=betas[1], beta=betas[0])
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == yarn_rotary(model).original.inv_freq.shape
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
    assert scaling == pytest.approx(expected_scaling, rel=1e-12)


@pytest.mark.parametrize("length", [1, 64, TRAIN_LENGTH, TRAIN_LENGTH + 1, 300, 1000])
def test_dynamic_frequencies_use_s_of_the_current_length(length):
    model = tiny_model()
    original = model.model.rotary_emb.inv_freq.clone()
    inv_freq, scaling = yarn_rotary(apply_method(model, "yarn")).frequencies(length, torch.device("cpu"))
    if length <= TRAIN_LENGTH:  # the model's own frequencies, not yarn at s = 1
        assert torch.equal(inv_freq, original) and scaling == 1.0
    else:
        expected, expected_scaling = paper_yarn(10000.0, 16, TRAIN_LENGTH, length / TRAIN_LENGTH)
        torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
        assert scaling == pytest.approx(expected_scaling, rel=1e-12)


def test_attention_factor_overrides_the_temperature():
    model = apply_method(tiny_model(), "yarn", factor=4.0, attention_factor=1.5)
    _, scaling = yarn_rotary(model).frequencies(1, torch.device("cpu"))
    assert scaling == 1.5


def test_the_ramp_follows_the_code_not_the_papers_text():
    """Documented disagreement: the paper's gamma is linear in r, the code's linear in the pair index
    with rounded boundaries. Pairs outside both ramps agree; the others differ."""
    for overrides, base, rotary_dim, train_length in (SHAPES["tiny"], SHAPES["llama2-like"]):
        model = apply_method(tiny_model(**overrides), "yarn", factor=4.0)
        inv_freq = yarn_rotary(model).frequencies(1, torch.device("cpu"))[0].double()
        _, text = paper_ramp(base, rotary_dim, train_length, ramp="paper")
        theta, code = paper_ramp(base, rotary_dim, train_length, ramp="code")
        same = text == code  # both 0 or both 1
        assert same.any() and not same.all()
        torch.testing.assert_close(inv_freq[same],
                                   paper_yarn(base, rotary_dim, train_length, 4.0, ramp="paper")[0][same],
                                   rtol=1e-6, atol=0)
        assert (code - text).abs().max() > 0.3


def _stock_model_with(arch, inv_freq, scaling):
    """A stock model whose own rotary module uses the given frequencies and attention factor."""
    model = tiny_model(arch)
    rotary = decoder_of(model).rotary_emb
    rotary.inv_freq = inv_freq.to(torch.float32)
    rotary.attention_scaling = scaling
    return model


@pytest.mark.parametrize("arch", YARN_ARCHS)
@pytest.mark.parametrize("factor", [None, 4.0])
def test_logits_past_training_length_match_a_stock_model_with_the_papers_frequencies(arch, factor):
    ids = random_ids(3 * TRAIN_LENGTH)
    rotary_dim = 2 * decoder_of(tiny_model(arch)).rotary_emb.inv_freq.shape[-1]
    s = factor or ids.shape[1] / TRAIN_LENGTH
    expected_model = _stock_model_with(arch, *paper_yarn(10000.0, rotary_dim, TRAIN_LENGTH, s))
    model = apply_method(tiny_model(arch), "yarn", factor=factor)
    with torch.no_grad():  # the frequencies agree to float32 rounding (above): ~1e-5 rad at position 383
        torch.testing.assert_close(model(ids).logits, expected_model(ids).logits, atol=1e-3, rtol=1e-3)


# -- 2. dynamic equals Origin up to T; static does not ----------------------------------------------
@pytest.mark.parametrize("arch", YARN_ARCHS)
def test_dynamic_equals_origin_up_to_the_training_length(arch):
    ids = random_ids(TRAIN_LENGTH - 4)  # the 4 decode steps reach position T - 1, so L = T
    expected = prefill_and_decode(tiny_model(arch), ids)
    got = prefill_and_decode(apply_method(tiny_model(arch), "yarn"), ids)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_static_differs_from_origin_even_below_the_training_length():
    ids = random_ids(TRAIN_LENGTH // 2)
    with torch.no_grad():
        origin = tiny_model()(ids).logits
        got = apply_method(tiny_model(), "yarn", factor=4.0)(ids).logits
    assert (got - origin).abs().max() > 0.5


def test_dynamic_differs_from_origin_past_the_training_length():
    ids = random_ids(3 * TRAIN_LENGTH)
    with torch.no_grad():
        origin = tiny_model()(ids).logits[0, -TRAIN_LENGTH:]
        got = apply_method(tiny_model(), "yarn")(ids).logits[0, -TRAIN_LENGTH:]
    assert (got - origin).abs().max() > 0.5


def test_no_state_leaks_from_a_long_input_to_a_shorter_one():
    long_ids, short_ids = random_ids(4 * TRAIN_LENGTH), random_ids(2 * TRAIN_LENGTH, seed=2)
    fresh, used = apply_method(tiny_model(), "yarn"), apply_method(tiny_model(), "yarn")
    with torch.no_grad():
        used(long_ids)
        torch.testing.assert_close(used(short_ids).logits, fresh(short_ids).logits, atol=0, rtol=0)


def test_static_frequencies_are_made_on_the_inputs_device():
    """tests/methods/test_device.py runs the default (dynamic) config; the static one, from an empty cache."""
    model = apply_method(tiny_model("phi3"), "yarn", factor=4.0)
    yarn_rotary(model)._tables.clear()
    ids = random_ids(TRAIN_LENGTH + 5)
    with torch.device("meta"):
        logits = prefill_and_decode(model, ids, steps=2)
    assert all(step.device.type == "cpu" and torch.isfinite(step).all() for step in logits)


# -- 3. undo ----------------------------------------------------------------------------------------
def test_remove_restores_the_original_rotary_module():
    ids = random_ids(3 * TRAIN_LENGTH)
    model = tiny_model()
    original = model.model.rotary_emb
    with torch.no_grad():
        reference = model(ids).logits
        apply_method(model, "yarn", factor=2.0)
        assert model.model.rotary_emb is not original
        remove_method(model)
        assert model.model.rotary_emb is original
        torch.testing.assert_close(model(ids).logits, reference, atol=0, rtol=0)


# -- 4. cached decoding and parameters ---------------------------------------------------------------
@pytest.mark.parametrize("arch", YARN_ARCHS)
def test_static_cached_decoding_equals_recomputation(arch):
    ids = random_ids(2 * TRAIN_LENGTH + 4)
    steps, full = decode_vs_recompute(apply_method(tiny_model(arch), "yarn", factor=4.0), ids, 2 * TRAIN_LENGTH)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


def test_dynamic_cached_decoding_is_approximate_past_training_length():
    """Documented: cached keys keep the s they were rotated with."""
    ids = random_ids(2 * TRAIN_LENGTH + 4)
    steps, full = decode_vs_recompute(apply_method(tiny_model(), "yarn"), ids, 2 * TRAIN_LENGTH)
    assert not torch.allclose(steps[1:], full[1:], atol=1e-4)


@pytest.mark.parametrize("params,match", [
    (dict(factor=0.5), "factor"), (dict(factor=True), "factor"), (dict(factor="2"), "factor"),
    (dict(beta_fast=1.0, beta_slow=32.0), "beta_fast > beta_slow"), (dict(beta_slow=0.0), "beta_slow"),
    (dict(attention_factor=0.0), "attention_factor"), (dict(attention_factor=-1.0), "attention_factor"),
])
def test_bad_parameters_are_one_line(params, match):
    with pytest.raises(HarnessError, match=match) as error:
        apply_method(tiny_model(), "yarn", **params)
    assert "\n" not in str(error.value)


# -- 5. only plain RoPE -------------------------------------------------------------------------------
@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
], ids=lambda p: p["rope_type"])
def test_other_rope_types_are_refused_in_one_line(rope_parameters):
    model = tiny_model(rope_parameters=rope_parameters)
    original = model.model.rotary_emb
    with pytest.raises(UnsupportedModelError, match=f"yarn.*{rope_parameters['rope_type']}") as error:
        apply_method(model, "yarn")
    assert "\n" not in str(error.value) and model.model.rotary_emb is original

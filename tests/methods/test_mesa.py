"""Mesa: chunk plan, Stair PE and the chunk-triangular attention against the released code's rules;
the ReRoPE / Leaky-ReRoPE last-chunk rules against their per-pair definition."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from harness.errors import HarnessError
from harness.methods import apply_method, mesa_chunk_plan, stair_positions
from harness.methods.mesa import ChunkPlan, Mesa
from harness.methods.method import decoder_of
from tests.conftest import TRAIN_LENGTH, random_ids, tiny_model, tiny_params
from tests.methods.reference import (
    naive_attention,
    naive_positional_attention,
    reference_chunk_width,
    reference_chunks,
    reference_rerope_distance,
    reference_rope_position,
)
from tests.methods.test_rerope import FULL_ROTARY, PARTIAL_ROTARY, qkv

TINY_MESA = tiny_params("mesa")  # Mesa's defaults are for T = 2048+; these fit T = 128

T = TRAIN_LENGTH
# The last-chunk rules, with the tiny window (TINY_MESA's last_chunk_window) and a strong leak.
LAST_RULES = {
    "rerope": dict(last_chunk_rule="rerope"),
    "leaky": dict(last_chunk_rule="leaky-rerope", last_chunk_leaky_k=4),
    "leaky-auto": dict(last_chunk_rule="leaky-rerope", last_chunk_leaky_k="auto"),
}
PLAN_KEYS = ("first_chunk", "last_chunk", "reserve_new_tokens", "first_chunk_cache", "min_remainder")


def test_paper_figure_1_toy():
    """N = 4, E = 2: the 10th query sees relative distances 6,6,5,5,4,4,3,2,1,0."""
    positions = stair_positions(10, chunk_width=5, stair_width=2, train_length=8)  # P = 9 mod 5 = 4
    assert (positions[9] - positions).tolist() == [6, 6, 5, 5, 4, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("kv", [129, 150, 200, 281, 300, 1000, 2049])
@pytest.mark.parametrize("C,E", [(93, 4), (112, 50), (5, 2), (37, 7)])
def test_stair_positions_match_reference_code(kv, C, E):
    assert torch.equal(stair_positions(kv, C, E, T), reference_rope_position(kv, T, E, C))


def test_stair_closed_form_per_query():
    """For the query at t >= S: W(d) = d below N_t = t - S + 1, N_t + floor((d - N_t) / E) beyond."""
    kv, C, E = 1000, 300, 20
    pos = stair_positions(kv, C, E, 512)
    S = kv - (kv - 1) % C
    for t in range(S, kv):
        n_t = t - S + 1
        d = t - torch.arange(t + 1)
        expected = torch.where(d < n_t, d, n_t + torch.div(d - n_t, E, rounding_mode="floor"))
        assert torch.equal(pos[t] - pos[: t + 1], expected)


def test_dynamic_split_hand_worked():
    """Released code, LLaMA defaults: I = 8000, T = 2048 -> X = 7438, D = 1848, M = 46 < 200, C = 1848."""
    plan = mesa_chunk_plan(8000, 2048)
    assert plan.chunk_width == 1848
    assert plan.first_end == 100
    assert plan.middle == ((100, 1948), (1948, 3796), (3796, 5644), (5644, 7492))
    assert plan.last_start == 7492
    # M >= 200: X = 9000 + 50 - 612 = 8438, N = 4, M = 1046 -> C = 8438 // 5 = 1687
    assert mesa_chunk_plan(9000, 2048).chunk_width == 1687
    # the paper's Algorithm 2: X = 8000 - 612 = 7388, D = 1948, N = 3, M = 1544 -> C = 1847
    assert mesa_chunk_plan(8000, 2048, variant="paper").chunk_width == 1847


@pytest.mark.parametrize("I", [2000, 2100, 4096, 5000, 7777, 16384, 32000])
def test_plan_matches_reference_loop(I):
    T_ = 2048
    params = dict(first_chunk=100, last_chunk=512, reserve_new_tokens=50, first_chunk_cache=100, min_remainder=200)
    plan = mesa_chunk_plan(I, T_, **params)
    C = reference_chunk_width(I, T_, 100, 512, 50, 100, 200)
    assert plan.chunk_width == C
    chunks = reference_chunks(I, 100, C)
    assert plan.first_end == chunks[0][1]
    assert list(plan.middle) == [(b, e) for b, e, kind in chunks if kind == "middle"]
    assert plan.last_start == [b for b, _, kind in chunks if kind == "last"][0]


def test_plan_is_pure_and_unchunked_below_threshold():
    a = mesa_chunk_plan(5000, 2048)
    mesa_chunk_plan(9000, 2048)
    assert mesa_chunk_plan(5000, 2048) == a  # no state leaks between inputs (the reference's global)
    short = mesa_chunk_plan(1900, 2048)  # < T - reserve: one ordinary causal pass
    assert short.last_start == 0 and short.middle == ()


def test_bad_parameters_are_refused():
    with pytest.raises(HarnessError, match="first_chunk"):
        mesa_chunk_plan(5000, 150)
    with pytest.raises(HarnessError, match="variant"):
        mesa_chunk_plan(5000, 2048, variant="nope")
    with pytest.raises(HarnessError, match="stair_width"):
        Mesa(2048, stair_width=0)


def _bound_mesa(inv_freq, plan_length, kernels="fused", **overrides):
    params = dict(TINY_MESA, **overrides)
    method = Mesa(T, **params)
    method.inv_freq = inv_freq
    method.kernels = kernels
    method.begin_forward({"persist": True}, 0, plan_length)
    return method


def _reference_rows(I, t_values, kv, C, logn=True, plan_length=None, rule=None):
    """Per query: (query position, key indices, key positions, log-n factor) from the released code.
    ``rule`` (window, leaky_k) replaces Stair PE in the last chunk by W(d) per pair (key at t - W)."""
    plan_length = plan_length or I
    F, E = TINY_MESA["first_chunk"], TINY_MESA["stair_width"]
    chunks = (reference_chunks(plan_length, F, C) if plan_length >= T - TINY_MESA["reserve_new_tokens"]
              else [(0, plan_length, "last")])
    rows = []
    for t in t_values:
        begin, _, kind = next(c for c in chunks if c[0] <= t < c[1]) if t < plan_length else (None, None, "last")
        if kind == "first":
            keys = torch.arange(t + 1)
            rows.append((float(t), keys, keys, 1.0))
        elif kind == "middle":
            keys = torch.cat((torch.arange(F), torch.arange(begin, t + 1)))
            positions = torch.cat((torch.arange(F), F + torch.arange(t + 1 - begin)))
            rows.append((float(F + t - begin), keys, positions, 1.0))
        else:
            factor = max(1.0, math.log(t + 1) / math.log(T)) if logn else 1.0
            keys = torch.arange(t + 1)
            if rule is not None:
                distance = reference_rerope_distance(t - keys, **rule, train_length=T, key_count=kv)
                rows.append((float(t), keys, t - distance, factor))
                continue
            positions = reference_rope_position(kv, T, E, C)
            rows.append((float(positions[t]), keys, positions[: t + 1], factor))
    return rows


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("I", [126, 200, 300, 333])
def test_prefill_matches_reference_chunk_rules(kernels, inv_freq, I):
    method = _bound_mesa(inv_freq, I, kernels, block_bytes=1)  # tiny blocks: ragged query blocks everywhere
    C = method.state["plan"].chunk_width
    assert C == reference_chunk_width(I, T, 8, 16, 4, 8, 8)
    q, k, v = qkv(I, I)
    got = method.attend(0, q, k, v, 0.25)
    expected = naive_positional_attention(q, k, v, 0.25, inv_freq, _reference_rows(I, range(I), I, C))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("lq", [1, 9], ids=["decode", "continue"])
@pytest.mark.parametrize("kv", [150, 281, 300, 301, 333])
def test_decode_step_matches_reference(kernels, lq, kv):
    """Queries after a prefill of I tokens: the last Lq of kv keys, Stair PE over all of them."""
    I = 140
    method = _bound_mesa(FULL_ROTARY, I, kernels)
    C = method.state["plan"].chunk_width
    q, k, v = qkv(lq, kv)
    got = method.attend(0, q, k, v, 0.25)
    rows = _reference_rows(I, range(kv - lq, kv), kv, C, plan_length=I)
    expected = naive_positional_attention(q, k, v, 0.25, FULL_ROTARY, rows)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("lq", [1, 40])
def test_paper_variant_matches_eq3(lq):
    """variant=paper: W(d) = d for d <= N, N + ceil((d - N) / E) beyond, for every query (last chunk/decode)."""
    N, E, kv = 24, 5, 300
    method = _bound_mesa(FULL_ROTARY, kv - lq, variant="paper", stair_position=N, stair_width=E, block_bytes=1)
    q, k, v = qkv(lq, kv)

    def relative(t, keys):
        d = (t - keys).double()
        return torch.where(d <= N, d, N + torch.ceil((d - N) / E))

    got = method._attend_all(0, q, k, v, 0.25, kv - lq)
    expected = naive_attention(q, k, v, 0.25, FULL_ROTARY, torch.arange(kv - lq, kv), relative, logn_train_length=T)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", [None, "rerope", "leaky"])
def test_cached_decoding_equals_recomputation_with_plan_held_fixed(rule):
    """Prefill I tokens then decode n; equals one forward over I + n tokens with the same chunks
    (the last chunk extended) as long as the stair does not move (P does not wrap). The last-chunk
    rules (fixed k) depend on the distance only: no stair to move."""
    I, n = 300, 4
    ids = random_ids(I + n)
    model = apply_method(tiny_model(), "mesa", **TINY_MESA, **(LAST_RULES[rule] if rule else {}))
    mesa = model.model.harness_method
    plan = mesa.plan(I)
    assert (I - 1) % plan.chunk_width + n < plan.chunk_width  # no wrap within the n steps
    with torch.no_grad():
        out = model(input_ids=ids[:, :I], use_cache=True)
        cache, step_logits = out.cache, [out.logits[0, -1]]
        for i in range(I, I + n - 1):
            out = model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True)
            step_logits.append(out.logits[0, -1])
        fixed = ChunkPlan(I + n - 1, plan.first_end, plan.middle, plan.last_start, plan.chunk_width)
        mesa.plan = lambda length: fixed
        full = model(input_ids=ids[:, : I + n - 1], use_cache=False).logits[0, I - 1 :]
    torch.testing.assert_close(torch.stack(step_logits), full, atol=1e-4, rtol=1e-4)


def test_woven_keys_are_reused_between_decode_steps():
    """Decoding keeps the woven keys and rotates only the new one while the stair stands still."""
    model = apply_method(tiny_model(), "mesa", **TINY_MESA)
    rotations = []
    mesa = model.model.harness_method
    real_rope = mesa.rope
    mesa.rope = lambda x, positions, table=None: rotations.append(x.shape[2]) or real_rope(x, positions, table)
    with torch.no_grad():
        out = model(input_ids=random_ids(300), use_cache=True)
        out = model(input_ids=random_ids(1, seed=5), cache=out.cache, use_cache=True)  # rotates all keys once
        rotations.clear()
        model(input_ids=random_ids(1, seed=6), cache=out.cache, use_cache=True)
    # per layer: one query row and one new key; nothing of length 301
    assert max(rotations) == 1, rotations


def test_position_tables_are_computed_once_per_forward_not_per_layer(monkeypatch):
    """A decoding step's cos/sin tables (the woven query, the new key) and log-n factors are
    shared by every layer: per-layer position arithmetic is what made Mesa's steps slower than Origin's."""
    from harness.methods import base

    model = apply_method(tiny_model(num_hidden_layers=4), "mesa", **TINY_MESA)
    calls = []
    real = base.rope_cos_sin
    monkeypatch.setattr(base, "rope_cos_sin", lambda *args: calls.append(args[0].shape[0]) or real(*args))
    with torch.no_grad():
        out = model(input_ids=random_ids(300), use_cache=True)
        out = model(input_ids=random_ids(1, seed=5), cache=out.cache, use_cache=True)
        calls.clear()
        model(input_ids=random_ids(1, seed=6), cache=out.cache, use_cache=True)
    assert calls == [1, 1], calls  # the query's table and the new key's, once for all 4 layers


# ---- the last-chunk rules (ReRoPE's and Leaky-ReRoPE's, the paper's Figure 9) ----------------------
def _rule(name: str) -> dict:
    """The naive rule's settings (window, leaky_k; None: ReRoPE's clip) for LAST_RULES[name]."""
    params = LAST_RULES[name]
    leaky = params["last_chunk_rule"] == "leaky-rerope"
    return dict(window=TINY_MESA["last_chunk_window"], leaky_k=params["last_chunk_leaky_k"] if leaky else None)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("I", [100, 126, 300, 333])  # 100: unchunked, every query sees all keys
@pytest.mark.parametrize("rule", list(LAST_RULES))
def test_last_chunk_rule_prefill_matches_per_pair_definition(rule, kernels, inv_freq, I):
    """First and middle chunks as the released code; the last chunk's query t sees key j at W(t - j)."""
    method = _bound_mesa(inv_freq, I, kernels, block_bytes=1, **LAST_RULES[rule])
    C = method.state["plan"].chunk_width
    q, k, v = qkv(I, I)
    got = method.attend(0, q, k, v, 0.25)
    expected = naive_positional_attention(q, k, v, 0.25, inv_freq, _reference_rows(I, range(I), I, C, rule=_rule(rule)))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("lq", [1, 9], ids=["decode", "continue"])
@pytest.mark.parametrize("kv", [150, 301])
@pytest.mark.parametrize("rule", list(LAST_RULES))
def test_last_chunk_rule_decode_step_matches_per_pair_definition(rule, kernels, lq, kv):
    I = 140
    method = _bound_mesa(FULL_ROTARY, I, kernels, **LAST_RULES[rule])
    C = method.state["plan"].chunk_width
    q, k, v = qkv(lq, kv)
    got = method.attend(0, q, k, v, 0.25)
    rows = _reference_rows(I, range(kv - lq, kv), kv, C, plan_length=I, rule=_rule(rule))
    torch.testing.assert_close(got.double(), naive_positional_attention(q, k, v, 0.25, FULL_ROTARY, rows),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])  # GQA, full rotary; partial rotary
@pytest.mark.parametrize("rule", list(LAST_RULES))
def test_last_chunk_rule_logits_equal_a_model_with_naive_attention(rule, arch):
    """Past 3T on the tiny model: Mesa's logits equal the same model whose attention is the naive
    per-pair definition (float64, explicit softmax over every visible key); and the rule changes
    them (against Stair PE), so the equality is not vacuous."""
    length = 3 * T + 5
    ids = random_ids(length)
    model = apply_method(tiny_model(arch), "mesa", **TINY_MESA, **LAST_RULES[rule])
    mesa = decoder_of(model).harness_method
    C = mesa.plan(length).chunk_width
    with torch.no_grad():
        got = model(ids).logits[0]

        def naive(layer_idx, q, k, v, scaling):
            rows = _reference_rows(length, range(length), length, C, rule=_rule(rule))
            return naive_positional_attention(q, k, v, scaling, mesa.inv_freq, rows).to(q.dtype)

        mesa.attend = naive
        expected = model(ids).logits[0]
        stair = apply_method(tiny_model(arch), "mesa", **TINY_MESA)(ids).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    last = mesa.plan(length).last_start
    assert (got[last:] - stair[last:]).abs().max() > 0.1
    torch.testing.assert_close(got[:last], stair[:last])  # the first and middle chunks are unchanged


@pytest.mark.parametrize("params,message", [
    (dict(last_chunk_rule="ntk"),
     r"mesa last_chunk_rule must be one of \('stair', 'rerope', 'leaky-rerope'\), got 'ntk'"),
    (dict(last_chunk_window=0), "mesa last_chunk_window must be a positive integer, got 0"),
    (dict(last_chunk_window=2.5), "mesa last_chunk_window must be a positive integer, got 2.5"),
    (dict(last_chunk_leaky_k=0), "mesa last_chunk_leaky_k must be a number >= 1 or 'auto', got 0"),
    (dict(last_chunk_leaky_k="fast"), "mesa last_chunk_leaky_k must be a number >= 1 or 'auto', got 'fast'"),
    (dict(last_chunk_rule="leaky-rerope", last_chunk_leaky_k="auto", last_chunk_window=T),
     "mesa last_chunk_rule 'leaky-rerope': leaky_k 'auto' needs window < train_length, got window=128"),
])
def test_bad_last_chunk_settings_are_refused_in_one_line(params, message):
    with pytest.raises(HarnessError, match=f"^{message}") as error:
        Mesa(T, **dict(TINY_MESA, **params))
    assert "\n" not in str(error.value)


def test_plan_mode_refuses_a_bad_last_chunk_rule(tmp_path):
    from harness.plan import plan_job
    from tests.test_runner import config

    with pytest.raises(HarnessError, match="^mesa last_chunk_rule must be one of"):
        plan_job(config(tmp_path, "method=mesa", "method.last_chunk_rule=rerop"))


def test_decoding_keeps_the_rules_rotated_keys():
    """Plan mode's decode memory: ReRoPE's rule keeps one rotated copy of K, Leaky-ReRoPE's two."""
    assert Mesa(T, **TINY_MESA).decode_key_copies == 1
    assert Mesa(T, **TINY_MESA, **LAST_RULES["rerope"]).decode_key_copies == 1
    assert Mesa(T, **TINY_MESA, **LAST_RULES["leaky"]).decode_key_copies == 2


ROOT = Path(__file__).resolve().parents[2]
NEW_KEYS = ("last_chunk_rule", "last_chunk_window", "last_chunk_leaky_k")


def test_the_default_last_chunk_rule_keeps_every_committed_mesa_file(tmp_path):
    """A Mesa job composed today has the new keys at their defaults (conf/method/mesa.yaml); its
    hash is still the one of the committed config that predates them, so those files resume."""
    from harness.job import results_path
    from tests.test_runner import config

    defaults = OmegaConf.load(ROOT / "conf" / "method" / "mesa.yaml")
    committed = {saved: OmegaConf.load(saved) for saved in sorted(ROOT.glob("results/*/runs/*/*/mesa-*.yaml"))}
    assert any(not set(NEW_KEYS) & set(cfg.method) for cfg in committed.values())  # written before the keys
    for saved, cfg in committed.items():  # newer files (the ablation's among them) hash as they were written
        with open_dict(cfg):
            cfg.method.update({key: defaults[key] for key in NEW_KEYS if key not in cfg.method})
        assert results_path(cfg)[1] == saved.stem.rsplit("-", 1)[1], saved
    today = config(tmp_path, "method=mesa")
    digest = results_path(today)[1]
    for override in ("method.last_chunk_rule=rerope", "method.last_chunk_window=256", "method.last_chunk_leaky_k=8"):
        assert results_path(config(tmp_path, "method=mesa", override))[1] != digest, override

"""ALiBi (MPT): every method against a naive per-pair definition, Origin where promised, the stock
model restored, the rotary-only methods refused, device-clean, generate().

The naive reference (:class:`NaiveAlibi`) is the STOCK tiny MPT (a fresh one, same weights) whose
bias builder returns a bias made with plain Python loops: for every (query t, key j) pair, the
distance W(t, j) and the visibility straight from the method's written definition (its module
docstring; for Mesa the released code's chunking and Stair positions, transcribed in
tests/methods/reference.py), -slope_h * W with the slopes computed from ALiBi's formula, -inf where
invisible; log-n scaling multiplies the query third of each attention's Wqkv output. It shares no
code with harness.methods. Lengths reach 3T (T = max_seq_len = 128) so the methods really differ.
"""

import math

import pytest
import torch
from transformers import DynamicCache

from harness.architectures import architecture_for
from harness.errors import HarnessError, UnsupportedModelError
from harness.methods import METHODS, apply_method, build_method, mesa_chunk_plan, remove_method
from harness.methods.alibi import alibi_slopes
from harness.plan import estimate_memory
from tests.conftest import ALIBI_ARCHITECTURES, TINY_PARAMS, TRAIN_LENGTH, random_ids, tiny_model
from tests.methods.reference import reference_chunk_width, reference_chunks, reference_rope_position
from tests.methods.test_api import decode_vs_recompute
from tests.methods.test_parity import prefill_and_decode

T = TRAIN_LENGTH
ARCH = "mpt"
assert ARCH in ALIBI_ARCHITECTURES
ALIBI_METHODS = [m for m, cls in METHODS.items() if cls.rope_kinds is None or "alibi" in cls.rope_kinds]
ROTARY_ONLY = [m for m in METHODS if m not in ALIBI_METHODS]
# (case name, method, parameters): every ALiBi method with its tiny settings, plus variants.
CASES = [(m, m, TINY_PARAMS[m]) for m in ALIBI_METHODS] + [
    ("mesa-paper", "mesa", dict(TINY_PARAMS["mesa"], variant="paper")),
    ("mesa-rerope", "mesa", dict(TINY_PARAMS["mesa"], last_chunk_rule="rerope")),
    ("mesa-leaky-rerope", "mesa", dict(TINY_PARAMS["mesa"], last_chunk_rule="leaky-rerope", last_chunk_leaky_k=4)),
    ("mesa-leaky-rerope-auto", "mesa", dict(TINY_PARAMS["mesa"], last_chunk_rule="leaky-rerope",
                                            last_chunk_leaky_k="auto")),
    ("leaky-rerope-auto", "leaky-rerope", dict(window=32, leaky_k="auto")),
    ("self-extend-uneven", "self-extend", dict(window=30, group_size=4)),  # G does not divide the window
    ("lm-infinite-short", "lm-infinite", dict(n_global=10, n_local=64, distance_limit=48)),  # limit < n_local
    ("streaming-llm-short", "streaming-llm", dict(sink=3, window=40)),
]
CASE_IDS = [c[0] for c in CASES]


def settings(method: str, params: dict) -> dict:
    """The method's parameters with its defaults filled in (train_length: the tiny model's T)."""
    defaults = {k: v for k, v in METHODS[method].parameters().items() if k != "train_length"}
    return {**defaults, **params}


def mpt_slopes(heads: int, bias_max: float = 8.0) -> list[float]:
    """ALiBi's slopes as MPT defines them: 2^(-bias_max * k / n), k = 1..n, n the power of two >=
    heads; for other head counts the odd-indexed slopes, then the even-indexed ones, first ``heads``."""
    n = 2 ** math.ceil(math.log2(heads))
    slopes = [2 ** (-bias_max * k / n) for k in range(1, n + 1)]
    return slopes if n == heads else (slopes[1::2] + slopes[::2])[:heads]


# ---- naive rules: W(t, j) (None: invisible) and the query factor, per forward --------------------
class Rule:
    """A method's definition per pair. ``begin`` is called before each forward with the cached
    and total key counts; ``distance(t, j)`` is None for an invisible key."""

    def __init__(self, s: dict):
        self.s = s
        self.keys = 0

    def begin(self, past: int, keys: int) -> None:
        self.keys = keys

    def distance(self, t: int, j: int):
        return t - j if j <= t else None

    def factor(self, t: int) -> float:
        return 1.0


def logn(t: int) -> float:
    return max(1.0, math.log(t + 1) / math.log(T))


class ReRoPERule(Rule):
    """d below the window; w beyond (ReRoPE), w + (d - w) / k (Leaky; auto: 1/k = (T - w) / (L - w))."""

    def distance(self, t, j):
        d, w, k = t - j, self.s["window"], self.s.get("leaky_k")
        if d < 0:
            return None
        if d < w or k is None:
            return min(d, w)
        inv_k = min(1.0, (T - w) / max(1, self.keys - w)) if k == "auto" else 1 / k
        return w + (d - w) * inv_k

    def factor(self, t):
        return logn(t) if self.s["logn"] else 1.0


class SelfExtendRule(Rule):
    """Neighbours at d; beyond the window, query at t // G + w - w // G, key at j // G."""

    def distance(self, t, j):
        d, w, g = t - j, self.s["window"], self.s["group_size"]
        if d < 0:
            return None
        return d if d < w else (t // g + w - w // g) - j // g


class StreamingRule(Rule):
    """Sinks and the recent window visible, distances between cache slots."""

    def distance(self, t, j):
        sink = self.s["sink"]
        window = self.s["window"] or T - sink
        d = t - j
        if 0 <= d < window:
            return d
        if d >= window and j < sink:
            return min(t, sink + window - 1) - j
        return None


class LMInfiniteRule(Rule):
    """Lambda mask: local keys at d, the first n_global keys capped at the distance limit."""

    def distance(self, t, j):
        n_local = self.s["n_local"] or T
        limit = self.s["distance_limit"] or n_local
        d = t - j
        if 0 <= d < n_local:
            return d
        if d >= n_local and j < self.s["n_global"]:
            return min(d, limit)
        return None


class MesaRule(Rule):
    """The released code's chunk loop and Stair positions (tests/methods/reference.py); the paper
    variant's Eq. 3 per pair; a last-chunk rule's W per pair (ReRoPE min(d, w), Leaky-ReRoPE
    w + (d - w) / k beyond w) where Stair PE would be. The prompt's chunk width serves every later forward."""

    def begin(self, past, keys):
        s = self.s
        super().begin(past, keys)
        if past == 0:
            self.prompt = keys
            if s["variant"] == "code":
                chunked = keys >= T - s["reserve_new_tokens"]
                self.width = reference_chunk_width(keys, T, s["first_chunk"], s["last_chunk"], s["reserve_new_tokens"],
                                                   s["first_chunk_cache"], s["min_remainder"])
            else:
                plan = mesa_chunk_plan(keys, T, s["first_chunk"], s["last_chunk"], s["reserve_new_tokens"],
                                       s["first_chunk_cache"], s["min_remainder"], variant="paper")
                chunked, self.width = plan.last_start > 0, plan.chunk_width
            self.chunks = reference_chunks(keys, s["first_chunk"], self.width) if chunked else None
        self.prefill = past == 0
        self.woven = reference_rope_position(keys, T, s["stair_width"], self.width).tolist()

    def chunk_of(self, t):
        if not (self.prefill and self.chunks):
            return None, None
        return next((beg, kind) for beg, end, kind in self.chunks if beg <= t < end)

    def stair(self, t, j):
        d = t - j
        rule, w, k = self.s["last_chunk_rule"], self.s["last_chunk_window"], self.s["last_chunk_leaky_k"]
        if rule != "stair":
            if d < w or rule == "rerope":
                return min(d, w)
            inv_k = min(1.0, (T - w) / max(1, self.keys - w)) if k == "auto" else 1 / k
            return w + (d - w) * inv_k
        if self.s["variant"] == "paper" and self.keys > T:
            n, e = self.s["stair_position"], self.s["stair_width"]
            return d if d <= n else n + math.ceil((d - n) / e)
        return self.woven[t] - self.woven[j]

    def distance(self, t, j):
        if j > t:
            return None
        beg, kind = self.chunk_of(t)
        f = self.s["first_chunk"]
        if kind == "first":
            return t - j
        if kind == "middle":
            if j < f:
                return f + (t - beg) - j
            return t - j if j >= beg else None
        return self.stair(t, j)

    def factor(self, t):
        return logn(t) if self.s["logn"] and self.chunk_of(t)[1] in (None, "last") else 1.0


RULES = {"origin": Rule, "rerope": ReRoPERule, "leaky-rerope": ReRoPERule, "self-extend": SelfExtendRule,
         "streaming-llm": StreamingRule, "lm-infinite": LMInfiniteRule, "mesa": MesaRule}


class NaiveAlibi:
    """The stock tiny MPT with a bias built per pair from ``rule`` (module docstring)."""

    def __init__(self, rule: Rule):
        self.rule = rule
        self.model = tiny_model(ARCH)
        decoder = self.model.transformer
        self.slopes = torch.tensor(mpt_slopes(self.model.config.n_heads), dtype=torch.float64)
        self.width = self.model.config.d_model
        decoder.build_mpt_alibi_tensor = self.bias
        for block in decoder.blocks:
            block.attn.Wqkv.register_forward_hook(self.scale_queries)
        self.past = self.new = 0

    def bias(self, num_heads, sequence_length, alibi_bias_max=8, device=None):
        keys = self.past + self.new
        rows = [[self.rule.distance(t, j) for j in range(keys)] for t in range(self.past, keys)]
        w = torch.tensor([[math.inf if x is None else x for x in row] for row in rows], dtype=torch.float64)
        return (-self.slopes[:, None, None] * w[None]).float()

    def scale_queries(self, module, inputs, output):
        factors = torch.tensor([self.rule.factor(t) for t in range(self.past, self.past + self.new)])
        out = output.clone()
        out[..., : self.width] *= factors[None, :, None].to(out.dtype)
        return out

    @torch.no_grad()
    def forwards(self, ids, splits):
        return run_forwards(self.model, ids, splits, self)


@torch.no_grad()
def run_forwards(model, ids, splits, naive=None):
    """Logits (L_i, vocab) of each forward over consecutive pieces of ``ids`` with one KV cache."""
    cache, start, logits = DynamicCache(), 0, []
    for n in splits:
        if naive is not None:
            naive.past, naive.new = start, n
            naive.rule.begin(start, start + n)
        out = model(input_ids=ids[:, start : start + n], cache=cache, use_cache=True)
        logits.append(out.logits[0])
        start += n
    return logits


# A prefill past 3T; a prefill past 2T, a continuation of 7 tokens, then 4 one-token steps.
SCENARIOS = {"prefill": [3 * T + 5], "continue-and-decode": [2 * T + 3, 7, 1, 1, 1, 1]}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_method_equals_its_naive_per_pair_definition(case, scenario):
    name, method, params = case
    splits = SCENARIOS[scenario]
    ids = random_ids(sum(splits))
    naive = NaiveAlibi(RULES[method](settings(method, params))).forwards(ids, splits)
    got = run_forwards(apply_method(tiny_model(ARCH), method, **params), ids, splits)
    for i, (g, e) in enumerate(zip(got, naive)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name} forward {i}: {m}")


def test_the_naive_comparison_sees_a_distance_off_by_one():
    """Guard: the tiny MPT's attention is sharp enough (init std 0.2) that every distance beyond 32
    one unit too long changes the logits a hundred times the tolerance, so the comparisons above
    are not vacuous."""

    class OffByOne(Rule):
        def distance(self, t, j):
            return None if j > t else t - j + (t - j > 32)

    ids = random_ids(3 * T)
    origin = run_forwards(apply_method(tiny_model(ARCH), "origin"), ids, [3 * T])[0]
    wrong = NaiveAlibi(OffByOne({})).forwards(ids, [3 * T])[0]
    assert (origin - wrong).abs().max() > 1e-2


# ---- Origin where the methods promise it -------------------------------------------------------
@pytest.mark.parametrize("method", ALIBI_METHODS)
def test_method_equals_origin_inside_its_window(method):
    """24 prompt + 4 decoded tokens, inside every window and Mesa's chunking threshold: the stock MPT."""
    ids = random_ids(24)
    expected = prefill_and_decode(tiny_model(ARCH), ids)
    got = prefill_and_decode(apply_method(tiny_model(ARCH), method, **TINY_PARAMS[method]), ids)
    for step, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m: f"{method} step {step}: {m}")


@pytest.mark.parametrize("method,boundary", [("rerope", 32), ("leaky-rerope", 32), ("self-extend", 32),
                                             ("streaming-llm", T), ("lm-infinite", T), ("mesa", 8)])
def test_origin_until_the_window_then_different(method, boundary):
    """On a 3T input: Origin's logits before the window (StreamingLLM: sinks + window = T;
    LM-Infinite: n_local = T; Mesa: its first chunk), clearly others after it (the guard)."""
    ids = random_ids(3 * T)
    with torch.no_grad():
        origin = apply_method(tiny_model(ARCH), "origin")(ids).logits[0]
        got = apply_method(tiny_model(ARCH), method, **TINY_PARAMS[method])(ids).logits[0]
    torch.testing.assert_close(got[:boundary], origin[:boundary], atol=1e-4, rtol=1e-4)
    assert (got[boundary:] - origin[boundary:]).abs().max() > 0.5


def test_mesa_equals_origin_below_its_chunking_threshold():
    length = T - TINY_PARAMS["mesa"]["reserve_new_tokens"] - 1
    ids = random_ids(length)
    with torch.no_grad():
        expected = tiny_model(ARCH)(ids).logits
        got = apply_method(tiny_model(ARCH), "mesa", **TINY_PARAMS["mesa"])(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# ---- Origin and the stock model ----------------------------------------------------------------
def test_origin_is_the_stock_model_up_to_max_seq_len_and_plain_alibi_beyond():
    ids = random_ids(3 * T)
    stock = tiny_model(ARCH)
    origin = apply_method(tiny_model(ARCH), "origin")
    with torch.no_grad():
        assert torch.equal(origin(ids[:, :T]).logits, stock(ids[:, :T]).logits)  # bit-identical bias
        with pytest.raises(RuntimeError):
            stock(ids)  # stock MPT's bias is max_seq_len long
    assert origin.transformer.harness_alibi.method.name == "origin"
    # Past max_seq_len: plain ALiBi, -slope * (t - j) (test_method_equals_its_naive_per_pair_definition too)
    naive = NaiveAlibi(Rule({})).forwards(ids, [3 * T])[0]
    torch.testing.assert_close(run_forwards(origin, ids, [3 * T])[0], naive, atol=1e-4, rtol=1e-4)


def test_remove_method_restores_the_stock_model():
    ids = random_ids(3 * T)
    model = tiny_model(ARCH)
    decoder = model.transformer
    scales = [block.attn.softmax_scale for block in decoder.blocks]
    with torch.no_grad():
        reference = model(ids[:, :T]).logits
        for method in ("rerope", "mesa", "origin"):  # log-n methods set a tensor softmax_scale per forward
            apply_method(model, method, **TINY_PARAMS[method])
            model(ids)
        remove_method(model)
        assert "build_mpt_alibi_tensor" not in decoder.__dict__ and not decoder._forward_pre_hooks
        assert [block.attn.softmax_scale for block in decoder.blocks] == scales
        assert not hasattr(decoder, "harness_alibi")
        assert torch.equal(model(ids[:, :T]).logits, reference)
        with pytest.raises(RuntimeError):
            model(ids)
    assert model.harness_method_name is None


def test_slopes_are_mpts_own():
    decoder = tiny_model(ARCH).transformer
    for heads in (4, 6, 8):
        got = alibi_slopes(decoder.build_mpt_alibi_tensor, heads, 8, None)
        torch.testing.assert_close(got, torch.tensor(mpt_slopes(heads)), rtol=0, atol=0)


def test_the_bias_is_one_float32_tensor_per_forward_of_the_queries_and_keys():
    model = apply_method(tiny_model(ARCH), "rerope", **TINY_PARAMS["rerope"])
    seen = []
    builder = model.transformer.build_mpt_alibi_tensor

    def spy(*args, **kwargs):
        seen.append(builder(*args, **kwargs))
        return seen[-1]

    model.transformer.build_mpt_alibi_tensor = spy
    prefill_and_decode(model, random_ids(2 * T), steps=1)
    heads = model.config.n_heads
    assert [b.shape for b in seen] == [(heads, 2 * T, 2 * T), (heads, 1, 2 * T + 1)]
    assert all(b.dtype == torch.float32 for b in seen)
    assert torch.isneginf(seen[0][:, 0, 1:]).all() and torch.isfinite(seen[0].diagonal(dim1=1, dim2=2)).all()


@pytest.mark.parametrize("method", [m for m in ALIBI_METHODS if METHODS[m].cached_decoding == "exact"])
def test_cached_decoding_equals_full_recomputation(method):
    model = apply_method(tiny_model(ARCH), method, **TINY_PARAMS[method])
    steps, full = decode_vs_recompute(model, random_ids(2 * T + 4), 2 * T)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


# ---- refusals, devices, generate ---------------------------------------------------------------
@pytest.mark.parametrize("method", ROTARY_ONLY)
def test_rotary_only_methods_refuse_alibi_in_one_line(method):
    assert set(ROTARY_ONLY) >= {"dynamic-ntk", "yarn"}
    with pytest.raises(UnsupportedModelError, match=f"{method}.*'mpt'.*'alibi'") as error:
        apply_method(tiny_model(ARCH), method)
    assert "\n" not in str(error.value)


def test_padded_batches_are_refused_except_by_origin():
    ids = random_ids(10)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(HarnessError, match="padded"):
        apply_method(tiny_model(ARCH), "rerope", **TINY_PARAMS["rerope"])(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        got = apply_method(tiny_model(ARCH), "origin")(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got, tiny_model(ARCH)(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_tensor_is_created_off_device(case):
    """As tests/methods/test_device.py: the model on the CPU, torch's default device ``meta``."""
    _, method, params = case
    model = apply_method(tiny_model(ARCH), method, **params)
    ids = random_ids(3 * T + 5)
    with torch.device("meta"):
        logits = prefill_and_decode(model, ids, steps=3)
    assert all(step.device.type == "cpu" and torch.isfinite(step).all() for step in logits)


def test_generate_works_for_every_method():
    ids = random_ids(3 * T)
    for method in ALIBI_METHODS:
        model = apply_method(tiny_model(ARCH), method, **TINY_PARAMS[method])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                             do_sample=False)
        assert out.shape == (1, ids.shape[1] + 5), method


# ---- plan mode ---------------------------------------------------------------------------------
def test_plan_shape_counts_the_tiny_mpts_parameters():
    model = tiny_model(ARCH)
    config = model.config.to_dict()
    shape = architecture_for(config).shape(config)
    assert shape.positions == "alibi"
    assert shape.parameters == sum(p.numel() for p in model.parameters())


def test_plan_counts_mpts_eager_scores_and_the_methods_bias():
    """MPT-7B's shape at 8k tokens: every method but Origin adds an (H, L, L) float32 bias to the
    eager scores, whatever attn_implementation says; Origin's bias is one row per head."""
    config = dict(model_type="mpt", d_model=4096, n_heads=32, n_layers=32, expansion_ratio=4, max_seq_len=2048,
                  vocab_size=50432)
    shape = architecture_for(config).shape(config)
    length, heads = 8192, 32
    work = {m: estimate_memory(shape, build_method(m, 2048), length, 0, 1, "float16", "sdpa")["work"]
            for m in ALIBI_METHODS}
    square_gib = heads * length * length / 2**30
    assert work["origin"] >= 10 * square_gib  # two float32 (H, L, L) and one float16, at least
    for method in set(ALIBI_METHODS) - {"origin"}:
        assert work[method] == pytest.approx(work["origin"] + 4 * square_gib, rel=1e-3), method
    eager = estimate_memory(shape, build_method("rerope", 2048), length, 0, 1, "float16", "eager")["work"]
    assert eager == work["rerope"]


def test_train_length_defaults_to_max_seq_len():
    model = apply_method(tiny_model(ARCH, max_seq_len=96), "rerope", window=16)
    assert not hasattr(model.config, "max_position_embeddings")
    assert model.transformer.harness_alibi.method.train_length == 96

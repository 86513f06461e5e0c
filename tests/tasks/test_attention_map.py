"""The attention-map task: its probe against output_attentions (eager), sdpa, Mesa's chunk plan and
a naive ReRoPE, on the tiny models (attention far from uniform: tests/conftest.py)."""

import math

import pandas as pd
import pytest
import torch

from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from harness.methods import METHODS, apply_method
from harness.methods.mesa import Mesa
from tasks.attention_map import ALL_HEADS, PROBE_ATTRIBUTE, AttentionMapTask, BinProbe, attention_maps
from tests.conftest import ARCHITECTURES, TINY_PARAMS, TRAIN_LENGTH, tiny_model
from tests.methods.reference import rotate_by

LENGTH = 512  # the passkey prompt of at most 512 byte tokens: past T = 128, several Mesa chunks


def task(**params):
    return AttentionMapTask([LENGTH], tokenizer=ByteTokenizer(), train_length=TRAIN_LENGTH, **params)


def rows_of(model, **params) -> pd.DataFrame:
    return pd.DataFrame(task(**params).evaluate_length(model, LENGTH))


def grid_of(rows: pd.DataFrame, layer: int, head: int = ALL_HEADS) -> torch.Tensor:
    """One map of the rows as a (grid, grid) tensor, zeros above the diagonal (no rows there)."""
    cell = rows[(rows["layer"] == layer) & (rows["head"] == head)]
    grid = int(cell["query_bin"].max()) + 1
    values = torch.zeros(grid, grid, dtype=torch.float64)
    query_bins, key_bins, scores = (torch.tensor(cell[column].to_numpy(copy=True))
                                    for column in ("query_bin", "key_bin", "score"))
    values[query_bins, key_bins] = scores.double()
    return values


def bin_ranges(tokens: int, grid: int) -> list[range]:
    """The token positions of each bin: j is in bin floor(j * grid / tokens)."""
    members = [[] for _ in range(grid)]
    for j in range(tokens):
        members[j * grid // tokens].append(j)
    return [range(m[0], m[-1] + 1) for m in members]


def pooled(weights: torch.Tensor, grid: int) -> torch.Tensor:
    """(heads, L, L) attention weights -> (heads, grid, grid): per query bin, the mean over its
    queries of the sum of their weights over each key bin (written out, sharing nothing with the task)."""
    weights = weights.double()
    ranges = bin_ranges(weights.shape[-1], grid)
    per_key = torch.stack([weights[:, :, r.start : r.stop].sum(-1) for r in ranges], -1)  # (H, L, grid)
    return torch.stack([per_key[:, r.start : r.stop].mean(1) for r in ranges], 1)


def eager_weights(model, ids) -> tuple:
    with torch.no_grad():
        return model(torch.tensor([ids]), output_attentions=True, use_cache=False).attentions


# -- the map equals the model's own weights -------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_origin_eager_map_is_output_attentions_pooled(arch):
    model = apply_method(tiny_model(arch, attn_implementation="eager"), "origin")
    rows = rows_of(model, layers=[0, -1], heads=[0, 3], grid=64)
    ids = task().input_ids(LENGTH)
    weights = eager_weights(model, ids)
    for layer in (0, 1):
        expected = pooled(weights[layer][0], 64)
        for head in (0, 3):
            torch.testing.assert_close(grid_of(rows, layer, head), expected[head], atol=1e-6, rtol=1e-5)
    mean = rows_of(model, layers=[1], grid=64)  # heads null: the mean over the 4 query heads
    assert set(mean["head"]) == {ALL_HEADS}
    torch.testing.assert_close(grid_of(mean, 1), pooled(weights[1][0], 64).mean(0), atol=1e-6, rtol=1e-5)


def test_sdpa_gives_the_eager_map():
    eager = rows_of(apply_method(tiny_model(attn_implementation="eager"), "origin"), layers=[0, 1], grid=64)
    sdpa_model = apply_method(tiny_model(), "origin")
    assert sdpa_model.config._attn_implementation == "sdpa"
    sdpa = rows_of(sdpa_model, layers=[0, 1], grid=64)
    for layer in (0, 1):
        torch.testing.assert_close(grid_of(sdpa, layer), grid_of(eager, layer), atol=1e-5, rtol=1e-4)


def test_a_grid_wider_than_head_dim_takes_several_passes_and_rows_sum_to_one():
    """head_dim is 16: grid 40 takes three calls (16 + 16 + 8 bins); grid 7 one call."""
    model = apply_method(tiny_model(attn_implementation="eager"), "origin")
    weights = eager_weights(model, task().input_ids(LENGTH))
    for grid in (40, 7):
        rows = rows_of(model, layers=[1], grid=grid)
        assert len(rows) == grid * (grid + 1) // 2  # cells on or below the diagonal
        torch.testing.assert_close(grid_of(rows, 1), pooled(weights[1][0], grid).mean(0), atol=1e-6, rtol=1e-5)
        assert torch.allclose(grid_of(rows, 1).sum(1), torch.ones(grid, dtype=torch.float64), atol=1e-5)


# -- the methods' own attention --------------------------------------------------------------------
@pytest.mark.parametrize("attn_implementation", [None, "eager"])
def test_mesa_middle_chunks_see_only_the_first_chunk_and_themselves(attn_implementation):
    method = Mesa(TRAIN_LENGTH, **TINY_PARAMS["mesa"])
    model = apply_method(tiny_model(attn_implementation=attn_implementation), method)
    grid = 64
    rows = rows_of(model, layers=[0, 1], grid=grid)
    origin = rows_of(tiny_model(attn_implementation=attn_implementation), layers=[0, 1], grid=grid)
    tokens = int(rows["tokens"].iloc[0])
    plan = method.plan(tokens)
    assert len(plan.middle) >= 3  # the input is chunked
    ranges = bin_ranges(tokens, grid)
    checked = 0
    for layer in (0, 1):
        mesa_map, origin_map = grid_of(rows, layer), grid_of(origin, layer)
        assert torch.allclose(mesa_map.sum(1), torch.ones(grid, dtype=torch.float64), atol=1e-5)
        for start, end in plan.middle:
            for q, queries in enumerate(ranges):
                if not (start <= queries.start and queries.stop <= end):
                    continue  # a query bin across a chunk boundary
                hidden = [k for k, keys in enumerate(ranges[: q + 1])
                          if keys.start >= plan.first_end and not (start <= keys.start and keys.stop <= end)
                          and (keys.stop <= start or keys.start >= end)]
                if not hidden:
                    continue
                assert mesa_map[q, hidden].max() < 1e-6, (layer, q, hidden)
                checked += 1
                assert origin_map[q, hidden].sum() > 1e-3  # Origin does attend there: the test is not vacuous
    assert checked >= 10


def naive_rerope_weights(q, k, window: int, train_length: int, inv_freq, scaling: float) -> torch.Tensor:
    """(H, L, L) weights with relative position min(d, w), log-n scaled queries and an explicit softmax,
    per query and head (q (H, L, D), k (KVH, L, D), un-rotated)."""
    heads, length, _ = q.shape
    groups = heads // k.shape[0]
    weights = torch.zeros(heads, length, length, dtype=torch.float64)
    for t in range(length):
        factor = max(1.0, math.log(t + 1) / math.log(train_length))
        distance = torch.clamp(t - torch.arange(t + 1), max=window).double()
        for h in range(heads):
            rotated = rotate_by(q[h, t].expand(t + 1, -1) * factor, distance, inv_freq)
            weights[h, t, : t + 1] = torch.softmax((rotated * k[h // groups, : t + 1].double()).sum(-1) * scaling, -1)
    return weights


def test_rerope_map_is_the_naive_two_rule_attention_pooled():
    model = tiny_model()
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    model = apply_method(model, "rerope", **TINY_PARAMS["rerope"])
    window = TINY_PARAMS["rerope"]["window"]
    attention = model.model.layers[1].self_attn
    captured = {}

    def keep(module, args, kwargs):
        captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

    ids = task().input_ids(LENGTH)
    handle = attention.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        maps = attention_maps(model, ids, [1], grid=32)
    finally:
        handle.remove()
    hidden, head_dim = captured["hidden"][0].double(), attention.head_dim
    with torch.no_grad():
        q = (hidden @ attention.q_proj.weight.double().T).view(len(ids), -1, head_dim).transpose(0, 1)
        k = (hidden @ attention.k_proj.weight.double().T).view(len(ids), -1, head_dim).transpose(0, 1)
    weights = naive_rerope_weights(q, k, window, TRAIN_LENGTH, inv_freq, head_dim**-0.5)
    torch.testing.assert_close(maps[1].double().transpose(0, 1), pooled(weights, 32), atol=1e-5, rtol=1e-4)
    origin = attention_maps(tiny_model(), ids, [1], grid=32)[1]
    assert (origin - maps[1]).abs().max() > 1e-2  # far distances clipped at w: not Origin's map


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_rows_that_sum_to_one_and_leaves_the_model_unchanged(method):
    model = apply_method(tiny_model(), method, **TINY_PARAMS[method])
    ids = torch.tensor([task().input_ids(LENGTH)])
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    implementation = model.config._attn_implementation
    rows = rows_of(model, layers=[-1], grid=16)
    assert model.config._attn_implementation == implementation
    assert not any(hasattr(m, PROBE_ATTRIBUTE) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids, use_cache=False).logits, before)
    assert torch.allclose(grid_of(rows, 1).sum(1), torch.ones(16, dtype=torch.float64), atol=1e-5)


def test_a_failing_probe_restores_the_model(monkeypatch):
    model = apply_method(tiny_model(), "mesa", **TINY_PARAMS["mesa"])

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(BinProbe, "record", fail)
    with pytest.raises(RuntimeError, match="boom"):
        attention_maps(model, task().input_ids(LENGTH), [0], grid=16)
    assert model.config._attn_implementation == "harness_weave"
    assert not any(hasattr(m, PROBE_ATTRIBUTE) for m in model.modules())


# -- rows, settings, refusals ----------------------------------------------------------------------
def test_rows_have_the_stated_columns_and_bins_map_back_to_positions():
    rows = task(layers=[0, -1], heads=[2], grid=8).evaluate_length(tiny_model(), LENGTH)
    assert len(rows) == 2 * 8 * 9 // 2 and [row["sample"] for row in rows] == list(range(len(rows)))
    columns = AttentionMapTask.columns
    for row in rows:
        assert set(row) == {"sample", "score", "tokens", "input_hash"} | set(columns)
        assert all(isinstance(row[name], kind) for name, kind in columns.items()) and isinstance(row["score"], float)
    frame = pd.DataFrame(rows)
    tokens = int(frame["tokens"].iloc[0])
    assert tokens <= LENGTH and set(frame["layer"]) == {0, 1} and set(frame["head"]) == {2}
    assert (frame["key_bin"] <= frame["query_bin"]).all()
    starts = [r.start for r in bin_ranges(tokens, 8)]
    assert (frame["query_start"] == frame["query_bin"].map(starts.__getitem__)).all()
    assert (frame["key_start"] == frame["key_bin"].map(starts.__getitem__)).all()
    assert (frame["train_length"] == TRAIN_LENGTH).all()


def test_the_input_is_the_passkey_prompt():
    from tasks.passkey import make_sample

    assert task().input_ids(LENGTH) == make_sample(ByteTokenizer(), "raw", LENGTH, 0, 0).input_ids


@pytest.mark.parametrize("layers", [[99], [2], [0, -3]])
def test_a_layer_the_model_does_not_have_is_refused_in_one_line(layers):
    model = tiny_model()
    with pytest.raises(HarnessError, match=r"^task.layers \[.*\] out of range: the model has 2 decoder layers[^\n]*$"):
        task(layers=layers).check_model(model)
    with pytest.raises(HarnessError, match="out of range"):
        task(layers=layers).evaluate_length(model, LENGTH)
    task(layers=[0, 1, -1, -2]).check_model(model)


def test_bad_settings_are_one_line():
    with pytest.raises(HarnessError, match=r"^task.heads \[4\] out of range: the model has 4 attention heads"):
        task(heads=[4]).check_model(tiny_model())
    with pytest.raises(HarnessError, match="^task.grid must be an integer >= 2"):
        task(grid=1)
    with pytest.raises(HarnessError, match="^task.layers must be a non-empty list"):
        task(layers=[])
    with pytest.raises(HarnessError, match="^task.heads must be a non-negative integer"):
        task(heads=[-1])
    with pytest.raises(HarnessError, match=r"^task.lengths \[512\] are shorter than task.grid \(1024\)"):
        task(grid=1024)


def test_a_model_whose_attention_bypasses_the_interface_is_refused():
    with pytest.raises(HarnessError, match="^task 'attention-map': model type 'mpt' does not route attention"):
        task(layers=[0]).check_model(tiny_model("mpt"))


def test_a_job_asking_for_a_layer_the_model_lacks_writes_nothing(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.runner import run_job
    from tests.test_runner import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-random", "task=attention-map", "task.lengths=[400]",
                                           "task.layers=[99]", f"results_dir={tmp_path}"])
    with pytest.raises(HarnessError, match=r"task.layers \[99\] out of range"):
        run_job(cfg)
    assert not list(tmp_path.glob("runs/**/*.csv"))

"""The attention building blocks against plain softmax attention, and the memory they never use."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.methods import METHODS
from harness.methods.attention import (
    attention_with_lse,
    band_attention_with_lse,
    global_keys_attention_with_lse,
    merge_by_lse,
    trailing_band_attention_with_lse,
)
from harness.methods.base import WeaveMethod
from tests.conftest import TINY_PARAMS, TRAIN_LENGTH
from tests.methods.test_rerope import FULL_ROTARY, qkv


def reference(q, k, v, scaling, visible):
    """Softmax attention in float64 with an explicit (Lq, Lk) visibility mask; returns (out, lse)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    s = (q.double() @ k.transpose(-1, -2) * scaling).masked_fill(~visible, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("causal,lq,lk", [(True, 70, 70), (False, 33, 90), (False, 1, 50)])
def test_attention_with_lse(dtype, kernels, causal, lq, lk):
    q, k, v = (x.to(dtype) for x in qkv(lq, lk))
    out, lse = attention_with_lse(q, k, v, 0.25, causal=causal, kernels=kernels, block_bytes=1)
    visible = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        visible = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None]
    expected_out, expected_lse = reference(q, k, v, 0.25, visible)
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("band", [1, 2, 7, 10, 16, 30, 34, 60, 69, 100])
def test_band_attention(kernels, band):
    q, k, v = qkv(70, 70)  # 70 = 7 blocks of 10; other bands leave a partial last block (1 to 33 queries)
    out, lse = band_attention_with_lse(q, k, v, 0.25, band=band, kernels=kernels, block_bytes=1)
    distance = torch.arange(70)[:, None] - torch.arange(70)[None, :]
    expected_out, expected_lse = reference(q, k, v, 0.25, (distance >= 0) & (distance < band))
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("band", [1, 5, 16, 100])
@pytest.mark.parametrize("lq,lk", [(50, 50), (1, 50), (9, 50), (9, 12)], ids=["prefill", "decode", "continue", "short"])
def test_trailing_band_attention(kernels, band, lq, lk):
    q, k, v = qkv(lq, lk)
    out, lse = trailing_band_attention_with_lse(q, k, v, 0.25, band=band, kernels=kernels, block_bytes=1)
    distance = torch.arange(lk - lq, lk)[:, None] - torch.arange(lk)[None, :]
    expected_out, expected_lse = reference(q, k, v, 0.25, (distance >= 0) & (distance < band))
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("sinks,band", [(1, 8), (4, 8), (4, 1), (6, 30)])
@pytest.mark.parametrize("lq,lk", [(50, 50), (1, 50), (9, 50), (20, 40)],
                         ids=["prefill", "decode", "continue", "ragged"])
def test_global_keys_and_band_merge_into_lambda_attention(kernels, sinks, band, lq, lk):
    """Band + the first S keys outside it, merged by LSE, is attention under the Lambda-shaped mask."""
    q, k, v = qkv(lq, lk)
    near = trailing_band_attention_with_lse(q, k, v, 0.25, band=band, kernels=kernels, block_bytes=1)
    result = global_keys_attention_with_lse(q, k[:, :, :sinks], v[:, :, :sinks], 0.25, lk - lq, band,
                                            kernels=kernels, block_bytes=1)
    t, j = torch.arange(lk - lq, lk)[:, None], torch.arange(lk)[None, :]
    visible = ((t - j >= 0) & (t - j < band)) | ((j < sinks) & (j <= t - band))
    expected_out, expected_lse = reference(q, k, v, 0.25, visible)
    out, lse = near
    if result is not None:
        first, part = result
        i = first - (lk - lq)
        assert i == max(0, band - (lk - lq))  # the first query that sees a key outside its band
        out, lse = out.clone(), lse.clone()
        out[:, :, i:], lse[:, :, i:] = merge_by_lse((out[:, :, i:], lse[:, :, i:]), part)
    else:
        assert lk - 1 < band
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-4)


def test_merge_by_lse_equals_attention_over_the_union():
    q, k, v = qkv(20, 60)
    split = torch.zeros(20, 60, dtype=torch.bool)
    split[:, ::3] = True  # two disjoint key sets, interleaved
    first = reference(q, k, v, 0.25, split)
    second = reference(q, k, v, 0.25, ~split)
    whole, _ = reference(q, k, v, 0.25, torch.ones(20, 60, dtype=torch.bool))
    torch.testing.assert_close(merge_by_lse(first, second)[0], whole)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for r in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(r, torch.Tensor):
                self.largest = max(self.largest, r.numel())
        return result


def _bound(method, kernels):
    method.inv_freq, method.kernels = FULL_ROTARY, kernels
    method.begin_forward({"persist": False}, 0, 2048)
    return method


WEAVE_METHODS = [name for name, cls in METHODS.items() if issubclass(cls, WeaveMethod)]
# (case, method, parameters): every weave method with its tiny settings, plus Mesa's last-chunk rules.
NO_SQUARE_CASES = [(name, name, TINY_PARAMS[name]) for name in WEAVE_METHODS] + [
    (f"mesa-{rule}", "mesa", dict(TINY_PARAMS["mesa"], last_chunk_rule=rule)) for rule in ("rerope", "leaky-rerope")]


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("case", NO_SQUARE_CASES, ids=[c[0] for c in NO_SQUARE_CASES])
def test_prefill_builds_no_length_squared_tensor(case, kernels):
    """At 2k tokens no op returns a tensor as large as one head's L x L scores (4M elements):
    every weave method's parts are fused kernels or blocks of bounded size (settings of the tiny
    test model, trained at 128 tokens, so 2k is far beyond it)."""
    _, name, params = case
    length = 2048
    method = _bound(METHODS[name](TRAIN_LENGTH, **dict(params, block_bytes=2**20)), kernels)
    q, k, v = qkv(length, length, scale=1.0)
    with LargestTensor() as spy:
        method.attend(0, q, k, v, 0.25)
    assert spy.largest < length * length / 4, spy.largest


def test_a_missing_fused_kernel_falls_back_to_the_explicit_one(monkeypatch, caplog):
    """Where the fused kernel refuses (here: a CUDA kernel asked to run on CPU tensors) or none
    exists for the device, the explicit kernel gives the same numbers, with one warning."""
    from harness.methods import attention

    q, k, v = qkv(40, 40)
    expected = attention_with_lse(q, k, v, 0.25, causal=True, kernels="explicit")
    monkeypatch.setattr(attention, "_warned", set())
    monkeypatch.setattr(attention, "fused_kernel_for", lambda query: "efficient_cuda")
    with caplog.at_level("WARNING"):
        got = attention_with_lse(q, k, v, 0.25, causal=True)
        attention_with_lse(q, k, v, 0.25, causal=True)
    assert sum("using explicit kernels" in r.message for r in caplog.records) == 1
    monkeypatch.setattr(attention, "fused_kernel_for", lambda query: None)
    band = band_attention_with_lse(q, k, v, 0.25, band=7)
    for a, b in [(got, expected), (band, band_attention_with_lse(q, k, v, 0.25, band=7, kernels="explicit"))]:
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])

"""StreamingLLM against the naive per-pair definition of its cache positions."""

import pytest
import torch

from harness.errors import HarnessError
from harness.methods.streaming_llm import StreamingLLM
from tests.methods.reference import naive_positional_attention
from tests.methods.test_parity import assert_origin_until
from tests.methods.test_rerope import FULL_ROTARY, PARTIAL_ROTARY, bound, qkv


def streaming_rows(query_index, sink, window):
    """Per query t: the keys a streaming cache holds (the first ``sink`` tokens and the ``window``
    most recent ones, itself included), each at its slot in that cache, and the query at its own slot."""
    rows = []
    for t in query_index.tolist():
        recent = list(range(max(0, t - window + 1), t + 1))
        sinks = [s for s in range(min(sink, t + 1)) if s not in recent]
        cache = sinks + recent  # in slot order
        rows.append((len(cache) - 1, torch.tensor(cache), torch.arange(len(cache)), 1.0))
    return rows


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("sink,window", [(4, 24), (1, 7), (0, 24), (4, 400)])
@pytest.mark.parametrize("lq,lk", [(300, 300), (37, 300), (1, 300), (1, 20)],
                         ids=["prefill", "continue", "decode", "short"])
def test_matches_naive_cache_positions(kernels, inv_freq, sink, window, lq, lk):
    method = bound(StreamingLLM(128, sink=sink, window=window, block_bytes=1), inv_freq, kernels)
    q, k, v = qkv(lq, lk)
    got = method.attend(0, q, k, v, 0.25)
    expected = naive_positional_attention(q, k, v, 0.25, inv_freq,
                                          streaming_rows(torch.arange(lk - lq, lk), sink, window))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def test_equals_origin_until_the_cache_is_full_and_differs_after(arch):
    assert_origin_until(arch, "streaming-llm", 4 + 60, sink=4, window=60)


def test_default_window_fills_the_training_length():
    assert StreamingLLM(8192).window == 8188
    assert StreamingLLM(8192, sink=0, window=100).window == 100


@pytest.mark.parametrize("params", [dict(sink=-1), dict(window=0), dict(window=2.5), dict(sink=True)])
def test_bad_parameters_are_one_line(params):
    with pytest.raises(HarnessError, match="^streaming-llm (sink|window) must be"):
        StreamingLLM(128, **params)

"""LM-Infinite against the naive per-pair definition of its Lambda mask and distance limit."""

import pytest
import torch

from harness.errors import HarnessError
from harness.methods.lm_infinite import LMInfinite
from tests.methods.reference import naive_positional_attention
from tests.methods.test_parity import assert_origin_until
from tests.methods.test_rerope import FULL_ROTARY, PARTIAL_ROTARY, bound, qkv


def lambda_rows(query_index, n_global, n_local, limit):
    """Per query t: the visible keys (local: t - j < n_local; global: j < n_global) and their
    positions such that query position - key position is t - j for local keys and min(t - j, limit)
    for global ones (the code caps only its global branch; with limit = n_local, the default, that
    is the paper's min(d, limit) on every pair)."""
    rows = []
    for t in query_index.tolist():
        keys = [j for j in range(t + 1) if t - j < n_local or j < n_global]
        distance = torch.tensor([t - j if t - j < n_local else min(t - j, limit) for j in keys], dtype=torch.float64)
        rows.append((0.0, torch.tensor(keys), -distance, 1.0))  # query at 0, key at -distance
    return rows


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("n_global,n_local,limit", [(10, 24, 24), (3, 24, 16), (1, 7, 7), (40, 400, 400)])
@pytest.mark.parametrize("lq,lk", [(300, 300), (37, 300), (1, 300), (1, 20)],
                         ids=["prefill", "continue", "decode", "short"])
def test_matches_naive_definition(kernels, inv_freq, n_global, n_local, limit, lq, lk):
    method = bound(LMInfinite(128, n_global=n_global, n_local=n_local, distance_limit=limit, block_bytes=1),
                   inv_freq, kernels)
    q, k, v = qkv(lq, lk)
    got = method.attend(0, q, k, v, 0.25)
    expected = naive_positional_attention(q, k, v, 0.25, inv_freq,
                                          lambda_rows(torch.arange(lk - lq, lk), n_global, n_local, limit))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def test_equals_origin_inside_the_local_window_and_differs_after(arch):
    assert_origin_until(arch, "lm-infinite", 60, n_global=4, n_local=60)


def test_defaults_follow_the_training_length():
    method = LMInfinite(4096)
    assert (method.n_global, method.n_local, method.distance_limit) == (100, 4096, 4096)


@pytest.mark.parametrize("params", [dict(n_global=0), dict(n_local=-3), dict(distance_limit=1.5),
                                    dict(n_local=64, distance_limit=100)])
def test_bad_parameters_are_one_line(params):
    with pytest.raises(HarnessError, match="^lm-infinite (n_global|n_local|distance_limit)"):
        LMInfinite(128, **params)

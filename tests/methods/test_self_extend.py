"""Self-Extend against the naive per-pair definition, and its relation to Mesa's Stair PE."""

import pytest
import torch

from harness.errors import HarnessError
from harness.methods.mesa import Mesa
from harness.methods.self_extend import SelfExtend
from tests.methods.reference import naive_attention
from tests.methods.test_parity import assert_origin_until
from tests.methods.test_rerope import FULL_ROTARY, PARTIAL_ROTARY, bound, qkv

T = 128


def self_extend_relative(window, group):
    """The paper's rule per pair: d inside the window, floor(t/G) - floor(j/G) + W - floor(W/G) beyond."""
    def relative(t, keys):
        d = (t - keys).double()
        grouped = (t // group - torch.div(keys, group, rounding_mode="floor") + window - window // group).double()
        return torch.where(d < window, d, grouped)
    return relative


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("group,window", [(4, 24), (3, 10), (8, 20), (1, 16)])
@pytest.mark.parametrize("lq,lk", [(300, 300), (37, 300), (1, 300), (1, 20), (20, 20)],
                         ids=["prefill", "continue", "decode", "short", "short-prefill"])
def test_matches_naive_definition(kernels, inv_freq, group, window, lq, lk):
    method = bound(SelfExtend(T, group_size=group, window=window, block_bytes=1), inv_freq, kernels)
    q, k, v = qkv(lq, lk)
    got = method.attend(0, q, k, v, 0.25)
    expected = naive_attention(q, k, v, 0.25, inv_freq, torch.arange(lk - lq, lk), self_extend_relative(window, group))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def test_group_size_one_is_origin():
    """G = 1: grouped positions are true positions, so every pair is at its true distance."""
    method = bound(SelfExtend(T, group_size=1, window=16), FULL_ROTARY)
    q, k, v = qkv(200, 200)
    expected = naive_attention(q, k, v, 0.25, FULL_ROTARY, torch.arange(200), lambda t, keys: (t - keys).double())
    torch.testing.assert_close(method.attend(0, q, k, v, 0.25).double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("n,e", [(24, 4), (20, 5), (30, 3)])
def test_stair_pe_is_self_extend_where_the_paper_says(n, e):
    """Appendix G: Stair PE (Mesa's paper variant: d <= N, then N + ceil((d - N)/E)) equals
    Self-Extend with window N and group size E when E divides N, for queries at multiples of E.
    Both are this project's implementations; the other queries are the guard (they differ)."""
    kv, lq = 300, 60
    q, k, v = qkv(lq, kv)
    mesa = Mesa(T, variant="paper", stair_position=n, stair_width=e, logn=False, first_chunk=8, last_chunk=16,
                reserve_new_tokens=4, first_chunk_cache=8, min_remainder=8, block_bytes=1)
    mesa.inv_freq = FULL_ROTARY
    mesa.begin_forward({"persist": False}, 0, kv)
    mesa.state["plan"] = mesa.plan(kv)
    stair = mesa._attend_all(0, q, k, v, 0.25, kv - lq)
    self_extend = bound(SelfExtend(T, group_size=e, window=n), FULL_ROTARY).attend(0, q, k, v, 0.25)
    aligned = torch.arange(kv - lq, kv) % e == 0
    torch.testing.assert_close(self_extend[:, :, aligned], stair[:, :, aligned], atol=2e-5, rtol=1e-4)
    differs = (self_extend[:, :, ~aligned] - stair[:, :, ~aligned]).abs().amax(dim=(0, 1, 3))
    assert (differs > 1e-3).all()


def test_equals_origin_inside_the_window_and_differs_after(arch):
    assert_origin_until(arch, "self-extend", 60, group_size=4, window=60)


@pytest.mark.parametrize("params", [dict(group_size=0), dict(window=-1), dict(window=2.5), dict(group_size=True)])
def test_bad_parameters_are_one_line(params):
    with pytest.raises(HarnessError, match="^self-extend (group_size|window) must be a positive integer"):
        SelfExtend(T, **params)

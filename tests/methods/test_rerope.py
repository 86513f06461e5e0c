"""ReRoPE and Leaky-ReRoPE against the naive per-pair definition (GQA, ragged blocks, decode)."""

import pytest
import torch

from harness.methods.rerope import LeakyReRoPE, ReRoPE
from tests.methods.reference import naive_attention

T = 128


def qkv(lq, lk, heads=4, kv_heads=2, dim=16, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, lq, dim, generator=g) * scale
    k = torch.randn(1, kv_heads, lk, dim, generator=g) * scale
    v = torch.randn(1, kv_heads, lk, dim, generator=g)
    return q, k, v


def bound(method, inv_freq, kernels="fused"):
    method.inv_freq = inv_freq
    method.kernels = kernels
    method.begin_forward({"persist": False}, 0, 0)
    return method


FULL_ROTARY = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
PARTIAL_ROTARY = FULL_ROTARY[:4]  # rotary_dim 8 of head_dim 16, the rest passes through


@pytest.mark.parametrize("kernels", ["fused", "explicit"])
@pytest.mark.parametrize("inv_freq", [FULL_ROTARY, PARTIAL_ROTARY], ids=["full", "partial"])
@pytest.mark.parametrize("leaky_k", [None, 4.0, "auto"])
@pytest.mark.parametrize("logn", [False, True])
@pytest.mark.parametrize("lq,lk", [(300, 300), (37, 300), (1, 300), (1, 20), (20, 20)],
                         ids=["prefill", "ragged", "decode", "short", "short-prefill"])
def test_matches_naive_definition(kernels, inv_freq, leaky_k, logn, lq, lk):
    window = 24
    # block_bytes this small forces query blocks of 16 rows, so 37 queries make ragged blocks.
    if leaky_k is None:
        rerope = ReRoPE(T, window=window, logn=logn, block_bytes=1)
    else:
        rerope = LeakyReRoPE(T, window=window, leaky_k=leaky_k, logn=logn, block_bytes=1)
    method = bound(rerope, inv_freq, kernels)
    inv_k = method.inverse_k(lk)
    if leaky_k == "auto":
        assert inv_k == pytest.approx((T - window) / (lk - window)) if lk > T else inv_k == 1.0

    def relative(t, keys):
        d = (t - keys).double()
        far = window + (d - window) * inv_k
        return torch.where(d < window, d, far)

    q, k, v = qkv(lq, lk)
    scaling = 16**-0.5
    got = method.attend(0, q, k, v, scaling)
    expected = naive_attention(q, k, v, scaling, inv_freq, torch.arange(lk - lq, lk), relative,
                               logn_train_length=T if logn else None)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)

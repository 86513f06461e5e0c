"""ReRoPE and Leaky-ReRoPE (Su, bojone/rerope): clip or compress relative distances beyond a window.

Relative distance d between a query and a key becomes
  * ReRoPE:        W(d) = min(d, w);
  * Leaky-ReRoPE:  W(d) = d for d < w, else w + (d - w) / k.
The paper sets 1/k = (T - w) / (L - w) per input (``leaky_k: auto``) so the farthest token lands
exactly at the training length T; the reference code uses a fixed k = 16.

Far pairs are computed by rotating the query to w + (t - w) / k and the key to j / k (for ReRoPE
1/k = 0: the query at w, the key un-rotated), which gives exactly W(d) for every far pair; near
pairs use ordinary RoPE. The reference materialises both full L x L score matrices. Here a prefill
is two attentions merged exactly by their log-sum-exp: the near band (keys j with t - j < w, O(L w)
work) and the far part, which is plain causal attention of queries w.. over keys ..L-w and runs on
the device's fused kernel. Decoding steps use ``banded_two_rule_attention`` (one query row).
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.methods.attention import (
    DEFAULT_BLOCK_BYTES,
    attention_with_lse,
    band_attention_with_lse,
    banded_two_rule_attention,
    merge_by_lse,
)
from harness.methods.base import WeaveMethod


class ReRoPE(WeaveMethod):
    """ReRoPE: every distance of ``window`` or more is seen as ``window`` (optional log-n query scaling)."""

    name = "rerope"
    label = "ReRoPE"
    color = "#ff7f0e"
    marker = "^"
    order = 20
    # While decoding it keeps the near-rotated keys; its far rule uses the un-rotated keys.
    decode_key_copies = 1
    leaky_k: float | str | None = None  # no leak: 1/k = 0 (Leaky-ReRoPE sets a k)

    def __init__(self, train_length: int, window: int = 512, logn: bool = True,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        if not isinstance(window, int) or window <= 0:
            raise HarnessError(f"window must be a positive integer, got {window!r}")
        self.window = window
        self.logn = logn
        self.block_bytes = block_bytes

    def prefill_attention_bytes(self, shape, length, dtype_bytes, attn_implementation):
        """Near-rotated q/k, far-rotated q (and k for Leaky), the band's blocked (padded, flipped)
        copies of q/k/v, two partial outputs and the merged one; explicit kernels add the scores
        of one query block (``block_bytes``) and their softmax."""
        per_token = shape.heads * shape.head_dim * dtype_bytes
        kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
        fused = 5 * length * per_token + (2 + self.decode_key_copies) * length * kv_per_token
        return fused + (2 * self.block_bytes if attn_implementation == "eager" else 0)

    def inverse_k(self, length: int) -> float:
        """1/k for a sequence of ``length`` tokens (0 for ReRoPE: every far distance maps to w)."""
        if self.leaky_k is None:
            return 0.0
        if self.leaky_k == "auto":
            # Farthest distance length-1 lands at T-1 ... kept <= 1 so short inputs are never stretched.
            return min(1.0, (self.train_length - self.window) / max(1, length - self.window))
        return 1.0 / float(self.leaky_k)

    def attend(self, layer_idx, query, key, value, scaling):
        lq, lk = query.shape[2], key.shape[2]
        if self.logn:
            query = query * self.logn_factor(lk - lq, lq, query)
        if lq == lk and lq > 1:
            return self._prefill(query, key, value, scaling)
        return self._attend_cached(layer_idx, query, key, value, scaling)

    def _prefill(self, query, key, value, scaling):
        """Near band + far part, each (out, LSE), merged: no L x L tensor anywhere."""
        length, w = key.shape[2], self.window
        index = torch.arange(length, device=query.device)
        near = band_attention_with_lse(self.rope(query, index, "true"), self.rope(key, index, "true"), value, scaling, band=w,
                                       kernels=self.kernels, block_bytes=self.block_bytes)
        if length <= w:  # every pair is near
            return near[0]
        inv_k = self.inverse_k(length)
        # Far pairs: query t >= w over keys j <= t - w, i.e. row i = t - w of a top-left causal
        # attention over keys 0..L-w-1, with the query at w + (t - w)/k and the key at j/k.
        far_query = self.rope(query[:, :, w:], index[w:] * inv_k + w * (1 - inv_k), "far-queries")
        far_key = key[:, :, : length - w]
        if inv_k != 0:
            far_key = self.rope(far_key, index[: length - w] * inv_k, "far-keys")
        far = attention_with_lse(far_query, far_key, value[:, :, : length - w], scaling, causal=True,
                                 kernels=self.kernels, block_bytes=self.block_bytes)
        out = near[0]
        out[:, :, w:] = merge_by_lse((near[0][:, :, w:], near[1][:, :, w:]), far)[0]
        return out

    def _attend_cached(self, layer_idx, query, key, value, scaling):
        """Queries that are the last Lq of Lk cached keys (decoding), explicit two-rule scores."""
        lq, lk = query.shape[2], key.shape[2]
        device = query.device
        query_index = torch.arange(lk - lq, lk, device=device)
        key_index = torch.arange(lk, device=device)
        inv_k = self.inverse_k(lk)
        w = self.window
        keep = lq < lk  # decoding: keep rotated keys for the next step
        near_query = self.rope(query, query_index, "near-queries")
        near_key = self.rotated_keys(layer_idx, "near", key, key_index, keep, layout="true")
        far_query = self.rope(query, query_index * inv_k + w * (1 - inv_k), "far-queries")
        far_key = key if inv_k == 0 else self.rotated_keys(layer_idx, "far", key, key_index * inv_k, keep,
                                                           layout=("scaled", inv_k))
        return banded_two_rule_attention(
            near_query, near_key, [far_query], [far_key], value, lk - lq, band=w, scaling=scaling,
            block_bytes=self.block_bytes,
        )


class LeakyReRoPE(ReRoPE):
    """Leaky-ReRoPE: distances beyond ``window`` grow by 1/``leaky_k`` per token instead of stopping;
    ``leaky_k: auto`` is the paper's per-input k (the farthest token lands at the training length)."""

    name = "leaky-rerope"
    label = "Leaky-ReRoPE"
    color = "#2ca02c"
    marker = "v"
    order = 30
    decode_key_copies = 2  # near- and far-rotated keys

    def __init__(self, train_length: int, window: int = 512, leaky_k: float | str = 16, logn: bool = True,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length, window=window, logn=logn, block_bytes=block_bytes)
        if leaky_k != "auto" and not (isinstance(leaky_k, (int, float)) and leaky_k >= 1):
            raise HarnessError(f"leaky_k must be a number >= 1 or 'auto', got {leaky_k!r}")
        if leaky_k == "auto" and window >= train_length:
            raise HarnessError(f"leaky_k 'auto' needs window < train_length, got window={window}, train_length={train_length}")
        self.leaky_k = leaky_k

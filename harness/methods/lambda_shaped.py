"""Lambda-shaped attention: a causal band of recent keys plus the first few keys of the sequence.

Query t sees the keys j with t - j < ``band`` at their true distance (ordinary RoPE), and the
first ``global_count`` keys of the sequence outside that band at a distance the method chooses
by rotating the query (:meth:`LambdaShapedMethod.global_rule`); every other key is invisible.
StreamingLLM (attention sinks) and LM-Infinite (global tokens) are such methods.

The band runs on :func:`~harness.methods.attention.trailing_band_attention_with_lse`, the first
keys on :func:`~harness.methods.attention.global_keys_attention_with_lse`, merged by their LSE:
O(L * (band + global_count)) work and no L x L tensor. The rule depends only on (t, j), so cached
decoding is exact.

On an ALiBi model (harness.methods.alibi) the same mask is the bias's visibility and the same
distances are fed to it: d = t - j in the band, :meth:`LambdaShapedMethod.global_distances` for
the first keys outside it (:meth:`LambdaShapedMethod.alibi_distances`).
"""

from __future__ import annotations

import torch

from harness.methods.alibi import pair_distances
from harness.methods.attention import global_keys_attention_with_lse, merge_by_lse, trailing_band_attention_with_lse
from harness.methods.base import WeaveMethod


class LambdaShapedMethod(WeaveMethod):
    """Base class: subclasses set ``band``, ``global_count`` and ``block_bytes`` and implement
    :meth:`global_rule`."""

    decode_key_copies = 1  # the keys rotated to their true positions
    band: int
    global_count: int

    def global_rule(self, query: torch.Tensor, query_index: torch.Tensor, key: torch.Tensor,
                    true_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries (B, H, n, D, un-rotated, at true indices ``query_index`` (n,)) and the first
        keys (B, KVH, S, D: un-rotated ``key``, or ``true_key`` rotated to their true positions)
        rotated so that each pair is at the method's distance for the keys outside the band."""
        raise NotImplementedError

    def global_distances(self, distance: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """ALiBi: the distances (Lq, K) the rule gives the first keys outside the band, from the
        true ones ``distance`` (Lq, K) = t - j of the queries at ``query_index`` (Lq,) (the same
        as :meth:`global_rule`'s rotations give on RoPE)."""
        raise NotImplementedError

    def alibi_distances(self, query_index, key_count):
        """Visible: keys in the band (0 <= t - j < ``band``) at their true distance, and the first
        ``global_count`` keys outside it at :meth:`global_distances`; every other key invisible."""
        distance, key_index = pair_distances(query_index, key_count)
        near = (distance >= 0) & (distance < self.band)
        first = (distance >= self.band) & (key_index < self.global_count)[None, :]
        far = self.global_distances(distance, query_index)
        return torch.where(near, distance, far).to(torch.float32), near | first

    def prefill_attention_bytes(self, shape, length, dtype_bytes, attn_implementation):
        """Rotated q/k, the queries rotated for the first keys, the band's blocked copies of
        q/k/v and the partial outputs; explicit kernels add one query block's scores and their softmax."""
        per_token = shape.heads * shape.head_dim * dtype_bytes
        kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
        return 5 * length * per_token + 3 * length * kv_per_token + (
            2 * self.block_bytes if attn_implementation == "eager" else 0)

    def attend(self, layer_idx, query, key, value, scaling):
        lq, lk = query.shape[2], key.shape[2]
        start = lk - lq  # the queries are the last lq of the lk keys
        device = query.device
        query_index = torch.arange(start, lk, device=device)
        true_key = self.rotated_keys(layer_idx, "true", key, torch.arange(lk, device=device), keep=lq < lk,
                                     layout="true")
        near = trailing_band_attention_with_lse(self.rope(query, query_index, "true-queries"), true_key, value,
                                                scaling, band=self.band, kernels=self.kernels,
                                                block_bytes=self.block_bytes)
        first = max(start, self.band)  # the first query that sees a key outside its band
        count = min(self.global_count, lk)
        if count == 0 or first >= lk:
            return near[0]
        i = first - start
        global_query, global_key = self.global_rule(query[:, :, i:], query_index[i:], key[:, :, :count],
                                                    true_key[:, :, :count])
        _, far = global_keys_attention_with_lse(global_query, global_key, value[:, :, :count], scaling, first,
                                                band=self.band, kernels=self.kernels, block_bytes=self.block_bytes)
        out = near[0]
        out[:, :, i:] = merge_by_lse((out[:, :, i:], near[1][:, :, i:]), far)[0]
        return out

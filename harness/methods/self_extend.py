"""Self-Extend (Jin et al., "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning", ICML 2024).

Two position rules merged into one attention. For the query at true index t and a key j <= t:

  * neighbour attention, t - j < ``window``: ordinary RoPE, distance t - j;
  * grouped attention, t - j >= ``window``: the key at floor(j / G) and the query at
    floor(t / G) + window - floor(window / G), G = ``group_size``, so the grouped distance
    continues from the neighbour window instead of restarting at window / G.

Up to ``window`` tokens every pair is a neighbour and the method equals Origin. The largest
distance it shows the model is about L / G + window - window / G; choose G and the window so
that it stays below the training length (G = 8 and window = 1024 reach ~58k tokens on a model
trained at 8k, ~25k on one trained at 4k).

Stair PE (Mesa's paper variant, Eq. 3: d for d <= N, N + ceil((d - N) / E) beyond) is the same
rule as Self-Extend with window N and group size E whenever E divides N and the query's index t is
a multiple of E (the paper's appendix G; tests/methods/test_self_extend.py checks it on the two
implementations).

Where this follows the released code (datamllab/LongLM, ``self_extend_patch/Llama.py``) rather
than the paper text:
  * defaults ``group_size = 8``, ``window = 1024``, the code's defaults (the paper tunes both per model);
  * the query's shift is window - floor(window / G), as in the code's flash-attention path; its
    plain path writes window - window / G (a float), which differs only when G does not divide
    the window;
  * the code's optional log-n query scaling (``scale_base``, off by default) is not included.

Prefill is two attentions merged exactly by their log-sum-exp, as for ReRoPE: the neighbour band
(O(L * window) work) and the grouped part, plain causal attention of queries window.. over keys
..L-window on the device's fused kernel. Cached steps use the banded two-rule kernel; keys rotated
to floor(j / G) never move, so decoding rotates only the new key.
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


class SelfExtend(WeaveMethod):
    """Neighbour attention inside ``window``; grouped positions floor(p / ``group_size``) beyond it."""

    name = "self-extend"
    label = "Self-Extend"
    color = "#17becf"
    marker = "h"
    order = 70
    decode_key_copies = 2  # keys rotated to their true and to their grouped positions

    def __init__(self, train_length: int, group_size: int = 8, window: int = 1024,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        for what, value in dict(group_size=group_size, window=window).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise HarnessError(f"self-extend {what} must be a positive integer, got {value!r}")
        self.group_size = group_size
        self.window = window
        self.block_bytes = block_bytes

    def prefill_attention_bytes(self, shape, length, dtype_bytes, attn_implementation):
        """As ReRoPE's: neighbour- and group-rotated q/k, the band's blocked copies and the partial
        outputs; explicit kernels add one query block's scores and their softmax."""
        per_token = shape.heads * shape.head_dim * dtype_bytes
        kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
        return 5 * length * per_token + (2 + self.decode_key_copies) * length * kv_per_token + (
            2 * self.block_bytes if attn_implementation == "eager" else 0)

    def grouped_query_positions(self, query_index: torch.Tensor) -> torch.Tensor:
        """floor(t / G) + window - floor(window / G) for the queries at true indices ``query_index``."""
        g, w = self.group_size, self.window
        return torch.div(query_index, g, rounding_mode="floor") + (w - w // g)

    def attend(self, layer_idx, query, key, value, scaling):
        lq, lk = query.shape[2], key.shape[2]
        if lq == lk and lq > 1:
            return self._prefill(query, key, value, scaling)
        return self._attend_cached(layer_idx, query, key, value, scaling)

    def _prefill(self, query, key, value, scaling):
        """Neighbour band + grouped part, each (out, LSE), merged: no L x L tensor anywhere."""
        length, w = key.shape[2], self.window
        index = torch.arange(length, device=query.device)
        near = band_attention_with_lse(self.rope(query, index, "true"), self.rope(key, index, "true"), value, scaling,
                                       band=w, kernels=self.kernels, block_bytes=self.block_bytes)
        if length <= w:  # every pair is a neighbour
            return near[0]
        # Grouped pairs: query t >= w over keys j <= t - w, i.e. row t - w of a top-left causal
        # attention over keys 0..L-w-1.
        grouped_query = self.rope(query[:, :, w:], self.grouped_query_positions(index[w:]), "grouped-queries")
        grouped_key = self.rope(key[:, :, : length - w], torch.div(index[: length - w], self.group_size,
                                                                   rounding_mode="floor"), "grouped-keys")
        grouped = attention_with_lse(grouped_query, grouped_key, value[:, :, : length - w], scaling, causal=True,
                                     kernels=self.kernels, block_bytes=self.block_bytes)
        out = near[0]
        out[:, :, w:] = merge_by_lse((near[0][:, :, w:], near[1][:, :, w:]), grouped)[0]
        return out

    def _attend_cached(self, layer_idx, query, key, value, scaling):
        """Queries that are the last Lq of Lk cached keys (decoding): the banded two-rule kernel."""
        lq, lk = query.shape[2], key.shape[2]
        device = query.device
        query_index = torch.arange(lk - lq, lk, device=device)
        key_index = torch.arange(lk, device=device)
        keep = lq < lk  # decoding: keep rotated keys for the next step
        near_query = self.rope(query, query_index, "near-queries")
        near_key = self.rotated_keys(layer_idx, "near", key, key_index, keep, layout="true")
        grouped_query = self.rope(query, self.grouped_query_positions(query_index), "grouped-queries")
        grouped_key = self.rotated_keys(layer_idx, "grouped", key,
                                        torch.div(key_index, self.group_size, rounding_mode="floor"), keep,
                                        layout=("grouped", self.group_size))
        return banded_two_rule_attention(near_query, near_key, [grouped_query], [grouped_key], value, lk - lq,
                                         band=self.window, scaling=scaling, block_bytes=self.block_bytes)

"""Two RoPE rules in one attention: true positions near the diagonal, another rule far from it.

For the query at true index t and a key j <= t: pairs with t - j < ``window`` use ordinary RoPE;
the others use the query rotated to ``far_query_positions(t)`` and the key to
``far_key_positions(j)``. ReRoPE and Leaky-ReRoPE (distances clipped or compressed) and
Self-Extend (grouped positions) are such methods.

A prefill is two attentions merged exactly by their log-sum-exp: the near band (O(L * window)
work, :func:`~harness.methods.attention.band_attention_with_lse`) and the far part, which is plain
top-left causal attention of queries window.. over keys ..L-window and so runs on the device's
fused kernel. Cached steps (decoding) use the banded two-rule kernel, keeping the rotated keys of
both rules between steps. Both rules depend only on (t, j) and the sequence length, so cached
decoding is exact whenever the far rule does not depend on the length.

The two attentions are functions of a method (rotations, kernels, rotated-key cache) and a rule
(window, far positions): :func:`near_far_prefill` also serves queries that are only the last ones
of the keys, so Mesa runs its last chunk with a ReRoPE or Leaky-ReRoPE as the rule
(``last_chunk_rule``, harness.methods.mesa).

On an ALiBi model (harness.methods.alibi) the same two rules give the distance fed to the bias:
W(t, j) = t - j near the diagonal and ``far_query_positions(t) - far_key_positions(j)`` beyond
(:meth:`NearFarMethod.alibi_distances`), every earlier key visible, log-n scaling as on RoPE.
"""

from __future__ import annotations

import torch

from harness.methods.alibi import pair_distances
from harness.methods.attention import (
    banded_two_rule_attention,
    merge_by_lse,
    trailing_band_attention_with_lse,
    trailing_causal_attention_with_lse,
)
from harness.methods.base import WeaveMethod
from harness.methods.rope import logn_scale


class NearFarMethod(WeaveMethod):
    """Base class: subclasses set ``window``, ``logn`` and ``block_bytes`` and implement the far
    rule's positions."""

    window: int
    logn: bool = False  # log-n query scaling (the ReRoPE reference code's)
    decode_key_copies = 1  # the near-rotated keys (plus the far-rotated ones where the far rule rotates keys)

    def far_query_positions(self, query_index: torch.Tensor, length: int) -> torch.Tensor:
        """Positions (n,) of the queries at true indices ``query_index`` for their far pairs, in a
        sequence of ``length`` keys."""
        raise NotImplementedError

    def far_key_positions(self, key_index: torch.Tensor, length: int) -> tuple[torch.Tensor | None, object]:
        """(positions (n,) of the keys for their far pairs, or None for un-rotated keys; the layout
        that names the rule, see :meth:`WeaveMethod.rotated_keys`)."""
        raise NotImplementedError

    def prefill_attention_bytes(self, shape, length, dtype_bytes, attn_implementation):
        """Near-rotated q/k, far-rotated q (and k), the band's blocked (padded, flipped) copies of
        q/k/v, two partial outputs and the merged one; explicit kernels add the scores of one query
        block (``block_bytes``) and their softmax."""
        per_token = shape.heads * shape.head_dim * dtype_bytes
        kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
        fused = 5 * length * per_token + (2 + self.decode_key_copies) * length * kv_per_token
        return fused + (2 * self.block_bytes if attn_implementation == "eager" else 0)

    def alibi_distances(self, query_index, key_count):
        """The RoPE rule's distance per pair: d = t - j for d < ``window``, else the far pair's
        ``far_query_positions(t) - far_key_positions(j)`` (an un-rotated key: 0); causal.
        ReRoPE: min(d, w); Leaky-ReRoPE: w + (d - w) / k beyond w; Self-Extend: the grouped distance."""
        distance, key_index = pair_distances(query_index, key_count)
        far_query = self.far_query_positions(query_index, key_count)
        far_key, _ = self.far_key_positions(key_index, key_count)
        far = far_query[:, None] - (0 if far_key is None else far_key[None, :])
        return torch.where(distance < self.window, distance, far).to(torch.float32), distance >= 0

    def alibi_query_scale(self, query_index, key_count):
        """log-n (as on RoPE), exactly 1 up to the training length."""
        if not self.logn or key_count <= self.train_length:
            return None
        return logn_scale(query_index + 1, self.train_length)

    def attend(self, layer_idx, query, key, value, scaling):
        lq, lk = query.shape[2], key.shape[2]
        if self.logn:
            query = query * self.logn_factor(lk - lq, lq, query)
        if lq == lk and lq > 1:
            return near_far_prefill(self, self, query, key, value, scaling)
        return near_far_cached(self, self, layer_idx, query, key, value, scaling)


def near_far_prefill(method: WeaveMethod, rule: NearFarMethod, query, key, value, scaling):
    """Near band + far part, each (out, LSE), merged: no L x L tensor anywhere.

    ``rule`` gives the window and the far positions, ``method`` the rotations and kernels (the
    same object for ReRoPE; Mesa's last chunk uses a ReRoPE as its rule). The queries are the
    last Lq of the Lk keys: a whole prefill (Lq == Lk) or Mesa's last chunk; log-n, if any, is
    already applied."""
    lq, length, w = query.shape[2], key.shape[2], rule.window
    start = length - lq
    index = torch.arange(length, device=query.device)
    near_key = method.rope(key, index, "true")
    # (the table's name and size fix its positions; a whole prefill shares the keys' table)
    near_query = method.rope(query, index[start:], "true" if start == 0 else f"true-from-{start}")
    near = trailing_band_attention_with_lse(near_query, near_key, value, scaling, band=w, kernels=method.kernels,
                                            block_bytes=method.block_bytes)
    if length <= w:  # every pair is near
        return near[0]
    # Far pairs: query t >= w over keys j <= t - w, i.e. the last queries of a lower-right causal
    # attention over keys 0..L-w-1 (top-left, plain causal, for a whole prefill).
    first = max(start, w)
    far_query = method.rope(query[:, :, first - start :], rule.far_query_positions(index[first:], length),
                            "far-queries")
    far_key = key[:, :, : length - w]
    positions, _ = rule.far_key_positions(index[: length - w], length)
    if positions is not None:
        far_key = method.rope(far_key, positions, "far-keys")
    far = trailing_causal_attention_with_lse(far_query, far_key, value[:, :, : length - w], scaling,
                                             kernels=method.kernels, block_bytes=method.block_bytes)
    out = near[0]
    out[:, :, first - start :] = merge_by_lse((near[0][:, :, first - start :], near[1][:, :, first - start :]), far)[0]
    return out


def near_far_cached(method: WeaveMethod, rule: NearFarMethod, layer_idx, query, key, value, scaling):
    """Queries that are the last Lq of Lk cached keys (decoding), explicit two-rule scores;
    ``method`` and ``rule`` as in :func:`near_far_prefill`."""
    lq, lk = query.shape[2], key.shape[2]
    device = query.device
    query_index = torch.arange(lk - lq, lk, device=device)
    key_index = torch.arange(lk, device=device)
    keep = lq < lk  # decoding: keep rotated keys for the next step
    near_query = method.rope(query, query_index, "near-queries")
    near_key = method.rotated_keys(layer_idx, "near", key, key_index, keep, layout="true")
    far_query = method.rope(query, rule.far_query_positions(query_index, lk), "far-queries")
    positions, layout = rule.far_key_positions(key_index, lk)
    far_key = key if positions is None else method.rotated_keys(layer_idx, "far", key, positions, keep, layout)
    return banded_two_rule_attention(near_query, near_key, [far_query], [far_key], value, lk - lq,
                                     band=rule.window, scaling=scaling, block_bytes=method.block_bytes)

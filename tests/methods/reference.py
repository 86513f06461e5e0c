"""Independent, deliberately naive definitions the methods are checked against.

Everything here works per query, per key, in float64, from the written definitions (and, for
Mesa, a literal transcription of the released code's rules), sharing no code with harness.methods.
"""

import math

import torch


def rotate_by(x: torch.Tensor, angle_positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., n, D) by per-row positions (n,), HF half-split layout, partial rotary allowed."""
    half = inv_freq.shape[0]
    theta = angle_positions.double()[:, None] * inv_freq.double()[None, :]  # (n, half)
    cos, sin = theta.cos(), theta.sin()
    x = x.double()
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


def naive_attention(q, k, v, scaling, inv_freq, query_index, relative_of, logn_train_length=None):
    """Attention where query t and key j interact at relative position ``relative_of(t, j)``.

    q (1, H, Lq, D), k/v (1, KVH, Lk, D), un-rotated; key j is visible to query t iff j <= t.
    ``relative_of(t, js)`` returns the (float) relative positions for the keys ``js`` (a tensor).
    Score = <R(W) q_t, k_j>, i.e. the query rotated by W and the key un-rotated, which equals
    <R(p_t) q_t, R(p_j) k_j> for any p_t - p_j = W.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    groups = heads // kv_heads
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, t in enumerate(query_index.tolist()):
        factor = 1.0
        if logn_train_length is not None:
            factor = max(1.0, math.log(t + 1) / math.log(logn_train_length))
        keys = torch.arange(t + 1)
        w = torch.as_tensor(relative_of(t, keys), dtype=torch.float64)
        for h in range(heads):
            g = h // groups
            rotated = rotate_by(q[0, h, i].expand(t + 1, -1) * factor, w, inv_freq)  # (t+1, D)
            scores = (rotated * k[0, g, : t + 1].double()).sum(-1) * scaling
            out[0, h, i] = torch.softmax(scores, -1) @ v[0, g, : t + 1].double()
    return out


def naive_positional_attention(q, k, v, scaling, inv_freq, rows):
    """Attention given, per query row, explicit (query position, [(key index, key position)...]).

    rows[i] = (q_position, key_indices (tensor), key_positions (tensor), logn factor).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    groups = heads // kv_heads
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, (q_pos, key_idx, key_pos, factor) in enumerate(rows):
        w = q_pos - key_pos.double()
        for h in range(heads):
            g = h // groups
            rotated = rotate_by(q[0, h, i].expand(len(key_idx), -1) * factor, w, inv_freq)
            scores = (rotated * k[0, g, key_idx].double()).sum(-1) * scaling
            out[0, h, i] = torch.softmax(scores, -1) @ v[0, g, key_idx].double()
    return out


# ---- Mesa, transcribed from the released code (methods/mesa_extrapolation.py) -----------------
def reference_chunk_width(I, T, F, L, reserve, first_chunk_cache, min_remainder):
    """PositionSet.set_align_position, without the early return (the caller checks I >= T - reserve)."""
    X = I + reserve - L - F
    N = X // (T - F - first_chunk_cache)
    M = X % (T - F - first_chunk_cache)
    if M < min_remainder:
        C = T - F - first_chunk_cache
    else:
        C = X // (N + 1)
    assert C + F < T
    return C


def reference_chunks(I, F, C):
    """chunk_forward's loop: a list of (begin, end, kind), kind in first / middle / last."""
    chunks, i, beg, end, kind = [], 0, 0, F, "first"
    while i < I:
        chunks.append((beg, min(end, I), kind))
        i = end
        beg = end
        kind = "middle" if end + C < I else "last"
        end += C
    return chunks


def reference_rope_position(kv_seq_len, T, E, C):
    """The rope_position vector of attention_chunk_forward."""
    if kv_seq_len > T:
        push_pos = (kv_seq_len - 1) % C
        pos1 = torch.arange(kv_seq_len - push_pos, kv_seq_len)
        last_pos = (kv_seq_len - push_pos) // E + 1
        pos2 = torch.arange(kv_seq_len - push_pos - last_pos, kv_seq_len - push_pos)
        sorted_pos2, _ = torch.sort(pos2.repeat(E))
        return torch.cat([sorted_pos2, pos1])[-kv_seq_len:]
    return torch.arange(kv_seq_len)


# ---- ReRoPE's and Leaky-ReRoPE's rule (also Mesa's last-chunk rule) ---------------------------------
def reference_rerope_distance(d: torch.Tensor, window: int, leaky_k=None, train_length=None, key_count=None):
    """W(d) per pair, float64, from the written rules: ReRoPE (leaky_k None) min(d, w); Leaky-ReRoPE
    d below w, w + (d - w) / k beyond; k = "auto": 1/k = (T - w) / (Lk - w), capped at 1."""
    d = d.double()
    if leaky_k is None:
        return torch.clamp(d, max=window)
    inv_k = min(1.0, (train_length - window) / max(1, key_count - window)) if leaky_k == "auto" else 1.0 / leaky_k
    return torch.where(d < window, d, window + (d - window) * inv_k)

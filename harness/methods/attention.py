"""Attention kernels shared by the weave methods, with bounded memory and no repeated K/V.

Shapes: query (B, H, Lq, D); key/value (B, KVH, Lk, D) with H = G * KVH (grouped-query attention:
query head h reads kv head h // G, as in transformers' ``repeat_kv``). Instead of repeating K/V G
times, the G query heads of a kv head are folded into the query-length axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Bytes of attention scores one query block may hold; bounds the memory of the explicit kernels.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def _fold_groups(query: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, Lq, D) -> (B, KVH, G * Lq, D), row g * Lq + i holding head kvh * G + g, query i."""
    b, h, lq, d = query.shape
    return query.reshape(b, kv_heads, (h // kv_heads) * lq, d)


def _unfold_groups(out: torch.Tensor, heads: int) -> torch.Tensor:
    b, _, _, d = out.shape
    return out.reshape(b, heads, -1, d)


def causal_mask(query_index: torch.Tensor, key_count: int) -> torch.Tensor:
    """Boolean (Lq, key_count) mask, True where key j <= the query's own index (may attend)."""
    keys = torch.arange(key_count, device=query_index.device)
    return keys[None, :] <= query_index[:, None]


def grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention with GQA folding. ``mask`` (Lq, Lk) bool, True = attend.

    ``is_causal`` means top-left aligned causal attention with Lq == Lk (a fresh prefill).
    Returns (B, H, Lq, D).
    """
    heads, kv_heads, lq = query.shape[1], key.shape[1], query.shape[2]
    groups = heads // kv_heads
    q = _fold_groups(query, kv_heads)
    if is_causal and groups > 1:
        mask, is_causal = causal_mask(torch.arange(lq, device=query.device), key.shape[2]), False
    if mask is not None and groups > 1:
        mask = mask.repeat(groups, 1)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, is_causal=is_causal, scale=scaling)
    return _unfold_groups(out, heads)


def blocked_causal_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_index: torch.Tensor,
    scaling: float,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """Causal attention for queries at absolute indices ``query_index`` (Lq,) over keys 0..Lk-1.

    Queries are processed in blocks so the boolean mask (and any score matrix the backend builds)
    stays within ``block_bytes``. Returns (B, H, Lq, D).
    """
    lq, lk = query.shape[2], key.shape[2]
    if lq == 1:
        hi = int(query_index[0]) + 1
        return grouped_sdpa(query, key[:, :, :hi], value[:, :, :hi], scaling)
    block = _block_rows(block_bytes, lk, query.shape[1], query.element_size())
    out = []
    for start in range(0, lq, block):
        idx = query_index[start : start + block]
        hi = int(idx[-1]) + 1
        out.append(
            grouped_sdpa(query[:, :, start : start + block], key[:, :, :hi], value[:, :, :hi], scaling,
                         mask=causal_mask(idx, hi))
        )
    return torch.cat(out, dim=2)


def _block_rows(block_bytes: int, key_count: int, heads: int, element_size: int, copies: int = 1) -> int:
    return max(16, block_bytes // max(1, key_count * heads * element_size * copies))


def banded_two_rule_attention(
    near_query: torch.Tensor,
    near_key: torch.Tensor,
    far_queries: Sequence[torch.Tensor],
    far_keys: Sequence[torch.Tensor],
    value: torch.Tensor,
    query_index: torch.Tensor,
    band: int,
    scaling: float,
    far_select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """Attention whose scores follow one RoPE rule near the diagonal and another far from it.

    A query at index t and a key at index j with distance d = t - j use
      * the NEAR rule if d < band: score = <near_query[t], near_key[j]>;
      * a FAR rule otherwise: score = <far_queries[r][t], far_keys[r][j]>, where r is 0 when there
        is one far rule, else ``far_select(query_indices, key_indices)`` (a bool (n, m) tensor picking
        rule 1 where True).
    Queries/keys are already rotated to each rule's positions. Only the band of keys within
    ``band`` of a query block gets near scores, so the cost is about one attention plus a band,
    and one block's scores stay within ``block_bytes`` (ReRoPE's reference builds two full L x L
    matrices instead). Causal. Returns (B, H, Lq, D).
    """
    b, heads, lq, dim = near_query.shape
    kv_heads, lk = near_key.shape[1], near_key.shape[2]
    groups = heads // kv_heads
    device = near_query.device
    key_index = torch.arange(lk, device=device)
    block = min(lq, _block_rows(block_bytes, lk, heads, 4, copies=1 + len(far_queries)))
    # Score buffers are allocated once at their largest size and reused through views, so the
    # allocator does not fragment over hundreds of slightly growing blocks.
    # (Under autograd, out= is not allowed; plain allocations are used then.)
    reuse = not (torch.is_grad_enabled() and near_query.requires_grad)
    buffers = [torch.empty(b * kv_heads * groups * block * lk, dtype=near_query.dtype, device=device)
               if reuse else None for _ in far_queries]
    out = torch.empty((b, kv_heads, groups, lq, dim), dtype=value.dtype, device=device)
    for start in range(0, lq, block):
        stop = min(start + block, lq)
        idx = query_index[start:stop]
        n, hi = stop - start, int(idx[-1]) + 1
        band_lo = max(0, int(idx[0]) - band + 1)

        def scores(q: torch.Tensor, k: torch.Tensor, lo: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
            """(B, KVH, G, n, hi - lo) scores of this block's queries against keys lo..hi-1."""
            qb = _fold_groups(q[:, :, start:stop], kv_heads)  # (B, KVH, G*n, D)
            target = None if buffer is None else buffer[: b * kv_heads * groups * n * (hi - lo)].view(
                b, kv_heads, groups * n, hi - lo)
            s = torch.matmul(qb, k[:, :, lo:hi].transpose(-1, -2), out=target)
            return s.mul_(scaling).unflatten(2, (groups, n))

        s = scores(far_queries[0], far_keys[0], 0, buffers[0])
        if len(far_queries) > 1:
            pick = far_select(idx, key_index[:hi])
            s = torch.where(pick, scores(far_queries[1], far_keys[1], 0, buffers[1]), s)
        near = scores(near_query, near_key, band_lo)
        distance = idx[:, None] - key_index[None, band_lo:hi]
        s[..., band_lo:hi] = torch.where(distance < band, near, s[..., band_lo:hi])
        s.masked_fill_(key_index[None, :hi] > idx[:, None], float("-inf"))
        # softmax in float32 (float64 stays), in place when allowed (every row sees its own key: no row is all -inf)
        if s.dtype not in (torch.float32, torch.float64):
            s = s.float()
        if reuse:
            p = s
            p.sub_(p.amax(dim=-1, keepdim=True)).exp_()
            p.div_(p.sum(dim=-1, keepdim=True))
        else:
            p = torch.softmax(s, dim=-1)
        out[:, :, :, start:stop] = torch.matmul(p.to(value.dtype).flatten(2, 3), value[:, :, :hi]).unflatten(2, (groups, n))
    return out.view(b, heads, lq, dim)

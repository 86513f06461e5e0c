"""Attention kernels shared by the weave methods: fused where the device has a kernel, exact
everywhere, with bounded memory and no repeated K/V.

Shapes: query (B, H, Lq, D); key/value (B, KVH, Lk, D) with H = G * KVH (grouped-query attention:
query head h reads kv head h // G, as in transformers' ``repeat_kv``). K/V are never repeated: the
fused kernels see them through a stride-0 view over the G query heads of each kv head, and the
explicit kernels fold the G query heads into the query-length axis.

The weave methods split one attention into parts that follow different position rules (ReRoPE's
near band and far part; Mesa's last chunk over earlier keys and over itself). Each part returns its
output and the log-sum-exp (LSE) of its scores, and :func:`merge_by_lse` combines them exactly:
softmax over the union of the parts' keys, with no score or mask tensor of size Lq x Lk.

Two kernel families, chosen per model by ``model.attn_implementation`` (see harness.methods.base):
  * ``fused`` (sdpa): the device's flash / memory-efficient attention ops, which return the LSE;
  * ``explicit`` (eager): matmul + softmax in query blocks of at most ``block_bytes`` of scores,
    the simple path, also taken where no fused kernel exists for the device or dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Bytes of attention scores one query block may hold; bounds the memory of the explicit kernels.
DEFAULT_BLOCK_BYTES = 64 * 2**20
KERNELS = ("fused", "explicit")
_warned: set[str] = set()


def _fold_groups(query: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, Lq, D) -> (B, KVH, G * Lq, D), row g * Lq + i holding head kvh * G + g, query i."""
    b, h, lq, d = query.shape
    return query.reshape(b, kv_heads, (h // kv_heads) * lq, d)


def _unfold_groups(out: torch.Tensor, heads: int) -> torch.Tensor:
    b, _, _, d = out.shape
    return out.reshape(b, heads, -1, d)


def _block_rows(block_bytes: int, key_count: int, heads: int, element_size: int, copies: int = 1) -> int:
    return max(16, block_bytes // max(1, key_count * heads * element_size * copies))


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and softmax in float32 at least (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


# ---- whole-attention helpers (no LSE) --------------------------------------------------------
def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                 is_causal: bool = False) -> torch.Tensor:
    """Torch's fused SDPA with GQA; ``is_causal`` is top-left aligned (query i sees keys <= i).
    Returns (B, H, Lq, D)."""
    return F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scaling,
                                          enable_gqa=query.shape[1] != key.shape[1])


def causal_attention(query, key, value, scaling: float, kernels: str = "fused",
                     block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """Top-left causal attention (query i sees keys 0..i), (B, H, L, D)."""
    if kernels == "fused":
        return grouped_sdpa(query, key, value, scaling, is_causal=True)
    return _explicit_lse(query, key, value, scaling, True, block_bytes)[0]


# ---- attention with log-sum-exp ---------------------------------------------------------------
def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, causal: bool = False,
    kernels: str = "fused", block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query over every key (``causal``: top-left, query i sees keys 0..i, which
    needs Lq == Lk). Returns the output (B, H, Lq, D) in the query's dtype and the LSE of each
    query's scaled scores (B, H, Lq) in float32 (float64 for float64 inputs)."""
    if causal and query.shape[2] != key.shape[2]:
        raise ValueError("causal attention_with_lse needs as many queries as keys")
    if kernels == "fused":
        fused = _fused_lse(query, key, value, scaling, causal)
        if fused is not None:
            return fused
    return _explicit_lse(query, key, value, scaling, causal, block_bytes)


def fused_kernel_for(query: torch.Tensor) -> str | None:
    """The fused kernel with log-sum-exp that serves ``query``'s device, dtype and head size, or None."""
    device, dim = query.device.type, query.shape[-1]
    if device == "cpu":
        return "flash_cpu"
    if device == "cuda":
        if query.dtype in (torch.float16, torch.bfloat16) and dim <= 256 and dim % 8 == 0:
            return "flash_cuda"
        return "efficient_cuda"  # float32 (and head sizes flash lacks)
    return None


def _fused_lse(query, key, value, scaling, causal):
    """The device's fused kernel that returns the LSE, or None where there is none."""
    kernel = fused_kernel_for(query)
    if kernel is None:
        return None
    b, heads, lq, dim = query.shape
    kv_heads, lk = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # (B * KVH, G, L, D) queries against a stride-0 view of each kv head over its G query heads.
    q = query.reshape(b * kv_heads, groups, lq, dim)
    k = key.reshape(b * kv_heads, 1, lk, dim).expand(-1, groups, -1, -1)
    v = value.reshape(b * kv_heads, 1, lk, dim).expand(-1, groups, -1, -1)
    try:
        if kernel == "flash_cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scaling)
        elif kernel == "flash_cuda":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False,
                                                                          scale=scaling)[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, causal, scale=scaling)[:2]
            lse = lse[..., :lq]  # some versions pad it to a multiple of 32 queries
    except (RuntimeError, NotImplementedError) as error:  # e.g. a layout or size the kernel refuses
        if kernel not in _warned:
            _warned.add(kernel)
            log.warning("no fused attention kernel for %s/%s (%s: %s); using explicit kernels",
                        query.device.type, query.dtype, kernel, str(error).splitlines()[0][:200])
        return None
    return out.reshape(b, heads, lq, dim), lse.reshape(b, heads, lq).to(_score_dtype(query.dtype))


def _explicit_lse(query, key, value, scaling, causal, block_bytes, band=None):
    """Matmul + softmax in query blocks of bounded score memory; exact in float32 (or float64).

    ``causal``: query i sees keys 0..i (Lq == Lk); ``band`` (with causal): only keys with
    i - j < band, so each block reads just the keys of its band and the work is O(L * band)."""
    b, heads, lq, dim = query.shape
    kv_heads, lk = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    score_dtype = _score_dtype(query.dtype)
    out = query.new_empty((b, heads, lq, dim))
    lse = query.new_empty((b, heads, lq), dtype=score_dtype)
    if band is None:
        rows = min(lq, _block_rows(block_bytes, lk, heads, 4))
    else:  # rows <= band, so a block's keys (rows + band - 1) stay under 2 * band
        rows = min(lq, band, _block_rows(block_bytes, 2 * band, heads, 4))
    index = torch.arange(lk, device=query.device)
    for start in range(0, lq, rows):
        stop = min(start + rows, lq)
        lo, hi = (0 if band is None else max(0, start - band + 1)), (stop if causal else lk)
        s = torch.matmul(_fold_groups(query[:, :, start:stop], kv_heads), key[:, :, lo:hi].transpose(-1, -2))
        s = (s.to(score_dtype) * scaling).unflatten(2, (groups, stop - start))  # (B, KVH, G, n, hi - lo)
        if causal:
            distance = index[start:stop, None] - index[None, lo:hi]
            hidden = distance < 0
            if band is not None:
                hidden |= distance >= band
            s.masked_fill_(hidden, float("-inf"))
        block_lse = torch.logsumexp(s, dim=-1)
        p = (s - block_lse[..., None]).exp_().to(value.dtype).flatten(2, 3)
        out[:, :, start:stop] = _unfold_groups(torch.matmul(p, value[:, :, lo:hi]), heads)
        lse[:, :, start:stop] = block_lse.reshape(b, heads, stop - start)
    return out, lse


def trailing_causal_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
    kernels: str = "fused", block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of queries that are the last Lq of the Lk keys (lower-right aligned: query
    i sees keys 0..Lk-Lq+i): the earlier keys, all visible, and the queries' own keys (top-left
    causal) as two attentions merged by their LSE, so both run on the fused kernel without a mask.
    Returns (out, LSE) as :func:`attention_with_lse`."""
    start = key.shape[2] - query.shape[2]
    own = attention_with_lse(query, key[:, :, start:], value[:, :, start:], scaling, causal=True,
                             kernels=kernels, block_bytes=block_bytes)
    if start == 0:
        return own
    earlier = attention_with_lse(query, key[:, :, :start], value[:, :, :start], scaling,
                                 kernels=kernels, block_bytes=block_bytes)
    return merge_by_lse(own, earlier)


def band_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, band: int,
    kernels: str = "fused", block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention limited to the band 0 <= i - j < ``band`` (Lq == Lk, query i at index i).

    The work and memory are O(L * band), never O(L^2). Fused: the sequence is cut into blocks of
    ``band`` tokens; query i of a block sees (a) keys 0..i of its own block (plain causal, all
    blocks as one batch) and (b) keys m > i of the block before, which, with both blocks reversed,
    is plain causal again; (a) and (b) are merged by their LSE; a partial last block takes three fused
    calls of its own (:func:`_fused_band_tail`). Explicit: blocks of query rows
    against the band of keys they can see. Returns (out, LSE) as :func:`attention_with_lse`.
    """
    length = query.shape[2]
    if length <= band:  # every causal pair is inside the band
        return attention_with_lse(query, key, value, scaling, causal=True, kernels=kernels, block_bytes=block_bytes)
    if kernels == "fused" and fused_kernel_for(query) is not None:
        return _fused_band(query, key, value, scaling, band)
    return _explicit_lse(query, key, value, scaling, True, block_bytes, band=band)


def _fused_band(query, key, value, scaling, band):
    b, heads, length, dim = query.shape
    w, blocks = band, length // band
    rest = length - blocks * w  # a partial last block is not padded to w (up to 3x the work past 1 block)
    if rest:
        whole = _fused_band(query[:, :, : blocks * w], key[:, :, : blocks * w], value[:, :, : blocks * w],
                            scaling, band)
        last = _fused_band_tail(query[:, :, blocks * w :], key, value, scaling, band)
        return torch.cat((whole[0], last[0]), dim=2), torch.cat((whole[1], last[1]), dim=2)

    def by_block(x: torch.Tensor) -> torch.Tensor:  # (B, h, L, D) -> (B, nb, h, w, D), a view
        return x.view(b, x.shape[1], blocks, w, dim).transpose(1, 2)

    qb, kb, vb = by_block(query), by_block(key), by_block(value)

    def run(q, k, v):  # batch every block: (B, n, h, l, D) -> out (B, n, H, l, D), lse (B, n, H, l)
        n, l_ = q.shape[1], q.shape[3]
        out, lse = attention_with_lse(q.reshape(b * n, heads, l_, dim), k.reshape(b * n, k.shape[2], l_, dim),
                                      v.reshape(b * n, v.shape[2], l_, dim), scaling, causal=True)
        return out.view(b, n, heads, l_, dim), lse.view(b, n, heads, l_)

    out, lse = run(qb, kb, vb)
    if w > 1:  # queries 0..w-2 of blocks 1.. against keys 1..w-1 of the block before (key m visible iff m > i)
        prev_out, prev_lse = run(qb[:, 1:, :, : w - 1].flip(3), kb[:, :-1, :, 1:].flip(3), vb[:, :-1, :, 1:].flip(3))
        merged = merge_by_lse((out[:, 1:, :, : w - 1], lse[:, 1:, :, : w - 1]), (prev_out.flip(3), prev_lse.flip(3)))
        out[:, 1:, :, : w - 1], lse[:, 1:, :, : w - 1] = merged
    return out.transpose(1, 2).reshape(b, heads, length, dim), lse.transpose(1, 2).reshape(b, heads, length)


def _fused_band_tail(query, key, value, scaling, band):
    """The band for the last r (< ``band``) queries (B, H, r, D) of the Lk keys, with s = Lk - r >= band - 1
    (every query has a whole band behind it): query i at s + i sees keys s + i - band + 1 .. s + i.
    Three fused calls, O(r * band) work: keys s + r - band .. s, which every query sees; the r - 1
    keys after s, which query i sees up to s + i (causal, one row down); the r - 1 keys before
    s + r - band, which query i sees from s + i - band + 1 on (causal once both are reversed)."""
    r, s = query.shape[2], key.shape[2] - query.shape[2]
    lo = s - band + 1  # the first key the first query sees
    out, lse = attention_with_lse(query, key[:, :, s + r - band : s + 1], value[:, :, s + r - band : s + 1], scaling)
    if r > 1:
        after = attention_with_lse(query[:, :, 1:], key[:, :, s + 1 :], value[:, :, s + 1 :], scaling, causal=True)
        out[:, :, 1:], lse[:, :, 1:] = merge_by_lse((out[:, :, 1:], lse[:, :, 1:]), after)
        flip = lo + r - 1  # the keys lo .. s + r - band - 1, reversed
        before = attention_with_lse(query[:, :, : r - 1].flip(2), key[:, :, lo:flip].flip(2),
                                    value[:, :, lo:flip].flip(2), scaling, causal=True)
        before = before[0].flip(2), before[1].flip(2)
        out[:, :, : r - 1], lse[:, :, : r - 1] = merge_by_lse((out[:, :, : r - 1], lse[:, :, : r - 1]), before)
    return out, lse


def trailing_band_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, band: int,
    kernels: str = "fused", block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`band_attention_with_lse` for queries that are the last Lq of Lk keys (a prefill when
    Lq == Lk, else decoding or a continuation): query i sits at index t = Lk - Lq + i and sees keys
    j with 0 <= t - j < ``band``. Returns (out, LSE) as :func:`attention_with_lse`.

    One query sees the last ``band`` keys, all of them, with no mask. Several queries are aligned
    with the keys they can see by zero query rows in front (fewer than ``band``), whose outputs are
    dropped: the band kernels then run unchanged.
    """
    lq, lk = query.shape[2], key.shape[2]
    if lq == lk:
        return band_attention_with_lse(query, key, value, scaling, band, kernels, block_bytes)
    lo = max(0, lk - lq - band + 1)  # the first key any of the queries can see
    if lq == 1:
        return attention_with_lse(query, key[:, :, lo:], value[:, :, lo:], scaling, kernels=kernels,
                                  block_bytes=block_bytes)
    pad = lk - lq - lo
    padded = torch.cat((query.new_zeros((*query.shape[:2], pad, query.shape[3])), query), dim=2)
    out, lse = band_attention_with_lse(padded, key[:, :, lo:], value[:, :, lo:], scaling, band, kernels, block_bytes)
    return out[:, :, pad:], lse[:, :, pad:]


def global_keys_attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, query_start: int, band: int,
    kernels: str = "fused", block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[int, tuple[torch.Tensor, torch.Tensor]] | None:
    """Attention of queries at true indices ``query_start``.. over the first S keys of the sequence
    (attention sinks, global tokens; key/value (B, KVH, S, D)) where those keys lie OUTSIDE the
    query's causal band: query t sees key s iff s <= t - ``band``. The complement of
    :func:`trailing_band_attention_with_lse` on those keys, so the two merge by LSE.

    Returns ``(first, (out, LSE))`` for the queries from index ``first`` on (earlier ones see no
    such key), or None if no query sees one. The queries at t >= band + S - 1 see all S keys (one
    fused attention without a mask); the at most S - 1 before them see a prefix (a small explicit
    attention with a mask).
    """
    lq, sinks = query.shape[2], key.shape[2]
    end = query_start + lq
    first = max(query_start, band)  # the first query that sees key 0
    if first >= end:
        return None
    all_from = max(first, band + sinks - 1)  # from here on every one of the S keys is visible
    parts = []
    if first < all_from:
        rows = query[:, :, first - query_start : min(all_from, end) - query_start]
        t = torch.arange(first, first + rows.shape[2], device=query.device)
        hidden = torch.arange(sinks, device=query.device)[None, :] > (t - band)[:, None]
        parts.append(_masked_lse(rows, key, value, scaling, hidden))
    if all_from < end:
        parts.append(attention_with_lse(query[:, :, all_from - query_start :], key, value, scaling,
                                        kernels=kernels, block_bytes=block_bytes))
    if len(parts) == 1:
        return first, parts[0]
    return first, (torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2))


def _masked_lse(query, key, value, scaling, hidden):
    """Explicit attention with a (Lq, Lk) bool mask of hidden pairs, for a few rows; every row must
    see at least one key. Returns (out, LSE) as attention_with_lse."""
    b, heads, lq, _ = query.shape
    kv_heads = key.shape[1]
    s = torch.matmul(_fold_groups(query, kv_heads), key.transpose(-1, -2)).to(_score_dtype(query.dtype)) * scaling
    s = s.unflatten(2, (heads // kv_heads, lq)).masked_fill_(hidden, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = (s - lse[..., None]).exp_().to(value.dtype).flatten(2, 3)
    return _unfold_groups(torch.matmul(p, value), heads), lse.reshape(b, heads, lq)


def merge_by_lse(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two attentions of the same queries over disjoint key sets into the attention over
    their union: out = (e^lse1 out1 + e^lse2 out2) / (e^lse1 + e^lse2), lse = log(e^lse1 + e^lse2).
    Shapes as attention_with_lse; the output keeps the first part's dtype."""
    (out1, lse1), (out2, lse2) = first, second
    total = torch.logaddexp(lse1, lse2)
    w1, w2 = (lse1 - total).exp_()[..., None], (lse2 - total).exp_()[..., None]
    merged = out1.to(w1.dtype) * w1
    merged.addcmul_(out2.to(w1.dtype), w2)
    return merged.to(out1.dtype), total


# ---- explicit two-rule attention (decoding, and variants without a fused form) ----------------
def banded_two_rule_attention(
    near_query: torch.Tensor,
    near_key: torch.Tensor,
    far_queries: Sequence[torch.Tensor],
    far_keys: Sequence[torch.Tensor],
    value: torch.Tensor,
    query_start: int,
    band: int,
    scaling: float,
    far_select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """Attention whose scores follow one RoPE rule near the diagonal and another far from it.

    Query i sits at index t = query_start + i; a key at index j with distance d = t - j uses
      * the NEAR rule if d < band: score = <near_query[t], near_key[j]>;
      * a FAR rule otherwise: score = <far_queries[r][t], far_keys[r][j]>, where r is 0 when there
        is one far rule, else ``far_select(query_indices, key_indices)`` (a bool (n, m) tensor picking
        rule 1 where True).
    Queries/keys are already rotated to each rule's positions. Only the band of keys within
    ``band`` of a query block gets near scores, and one block's scores stay within ``block_bytes``.
    Causal. Used for decoding steps (one query: cheap) and for Mesa's paper variant; prefills of
    ReRoPE go through the fused near/far split instead. Returns (B, H, Lq, D).
    """
    b, heads, lq, dim = near_query.shape
    kv_heads, lk = near_key.shape[1], near_key.shape[2]
    groups = heads // kv_heads
    device = near_query.device
    key_index = torch.arange(lk, device=device)
    query_index = torch.arange(query_start, query_start + lq, device=device)
    score_dtype = _score_dtype(near_query.dtype)
    block = min(lq, _block_rows(block_bytes, lk, heads, 4, copies=1 + len(far_queries)))
    out = torch.empty((b, kv_heads, groups, lq, dim), dtype=value.dtype, device=device)
    for start in range(0, lq, block):
        stop = min(start + block, lq)
        idx = query_index[start:stop]
        n, hi = stop - start, query_start + stop
        band_lo = max(0, query_start + start - band + 1)

        def scores(q: torch.Tensor, k: torch.Tensor, lo: int) -> torch.Tensor:
            """(B, KVH, G, n, hi - lo) scores of this block's queries against keys lo..hi-1."""
            s = torch.matmul(_fold_groups(q[:, :, start:stop], kv_heads), k[:, :, lo:hi].transpose(-1, -2))
            return (s.to(score_dtype) * scaling).unflatten(2, (groups, n))

        s = scores(far_queries[0], far_keys[0], 0)
        if len(far_queries) > 1:
            s = torch.where(far_select(idx, key_index[:hi]), scores(far_queries[1], far_keys[1], 0), s)
        near = scores(near_query, near_key, band_lo)
        distance = idx[:, None] - key_index[None, band_lo:hi]
        s[..., band_lo:hi] = torch.where(distance < band, near, s[..., band_lo:hi])
        s.masked_fill_(key_index[None, :hi] > idx[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).to(value.dtype).flatten(2, 3)
        out[:, :, :, start:stop] = torch.matmul(p, value[:, :, :hi]).unflatten(2, (groups, n))
    return out.view(b, heads, lq, dim)

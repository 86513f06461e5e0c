"""Mesa-Extrapolation (Ma et al., NeurIPS 2024): chunk-triangular attention with Stair PE.

Prefill of an input of I tokens, split by :func:`mesa_chunk_plan` into a first chunk of F tokens,
middle chunks of width C, and a last chunk:
  * the first chunk is ordinary causal attention at positions 0..F-1;
  * each middle chunk attends to the first chunk's keys plus its own (causal), at positions
    0..F+C-1, as if it came right after the first chunk; every position stays < T;
  * the last chunk attends to ALL earlier keys with Stair PE.
Each layer sees every chunk at once here (a layer's output for a chunk depends only on that
layer's keys), which is equivalent to the reference's chunk-by-chunk forward passes.

Stair PE (the released code's rule, the default ``variant="code"``), for kv_len keys > T:
P = (kv_len - 1) mod C; the last P keys keep their true positions; a key j before them, with
S = kv_len - P, sits at S - 1 - floor((S - 1 - j) / E) (the integers below S, each E times).
Queries sit at the same woven positions. A query at t >= S thus sees distance d as d for
d < N_t and N_t + floor((d - N_t) / E) beyond, N_t = t - S + 1.
``variant="paper"`` uses the paper's Eq. 3 instead: W(d) = d for d <= N, N + ceil((d - N) / E)
beyond, with a constant N (``stair_position``), plus the paper's DynamicSplit (Algorithm 2).

Decoding attends over the whole un-rotated cache with Stair PE recomputed for the new length;
the woven keys are kept between steps and only re-woven when the stair moves (every C tokens).

``last_chunk_rule`` (the paper's Figure 9 ablation) replaces Stair PE for the queries that see
every earlier key (the last chunk, an unchunked prefill, each cached step) by ReRoPE's rule,
W(d) = min(d, w), or Leaky-ReRoPE's, W(d) = d below w and w + (d - w) / k beyond, with
w = ``last_chunk_window`` and k = ``last_chunk_leaky_k`` (or "auto", 1/k = (T - w) / (Lk - w) for
Lk keys). The rule is a ReRoPE / LeakyReRoPE object (its checks, far positions and ALiBi distances)
run through harness.methods.near_far's attention with this method's rotations and key cache; the
first and middle chunks and log-n are unchanged; cached decoding equals recomputation with the plan
held fixed (for a fixed k; "auto" changes k with the key count, as for Leaky-ReRoPE). Inferred:
the paper does not say how the rules sit in the chunk framework; here they replace Stair PE
wherever it is used, so, unlike Stair PE, they change attention below T too (an unchunked prefill),
as ReRoPE does. With ``variant="paper"`` a rule replaces Eq. 3 and the variant only chooses the
split (Algorithm 2), which is still the paper's framework; ``stair_width`` and ``stair_position``
are then unused.

ALiBi models (MPT; harness.methods.alibi). The released code is LLaMA-only and the paper, which
reports MPT-7B results, does not say how Mesa was applied to ALiBi; this is inferred from the
method's idea (keep every distance the model sees inside the trained range) by feeding the bias
exactly the distances the RoPE path gives each pair (:meth:`Mesa.alibi_distances`):
  * a chunked prefill keeps its chunk-triangular visibility: the first chunk causal at d = t - j;
    a middle chunk starting at c sees the first chunk's keys at F + (t - c) - j (as if placed
    right after the first chunk) and its own earlier keys at t - j, nothing else; the last chunk
    sees every earlier key at its Stair distance, woven(t) - woven(j);
  * an unchunked prefill, a continuation and every decoding step see all earlier keys at their
    Stair distances for the current key count (the prompt's chunk width C), as on RoPE;
  * ``variant="paper"`` uses Eq. 3's W(d) per pair instead of woven positions past T;
  * log-n scales the queries that use Stair PE (last chunk, decoding), as on RoPE;
  * a ``last_chunk_rule`` gives those same queries its W per pair instead of the Stair distance
    (the rule's own ALiBi distances, harness.methods.near_far).
Why the same distances: ALiBi's bias is a function of the distance only, so a rule that gives
each pair a distance transfers unchanged, and what Mesa keeps inside the trained range (every
distance a first or middle chunk sees is below F + C < T; the Stair compresses the rest) is the
same. The bias is (H, L, L): the prefill's cost is MPT's eager attention's, not the linear cost of
the chunked RoPE path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError
from harness.methods.alibi import pair_distances
from harness.methods.attention import (
    DEFAULT_BLOCK_BYTES,
    banded_two_rule_attention,
    causal_attention,
    grouped_sdpa,
    trailing_causal_attention_with_lse,
)
from harness.methods.base import WeaveMethod
from harness.methods.near_far import NearFarMethod, near_far_cached, near_far_prefill
from harness.methods.rerope import LeakyReRoPE, ReRoPE, check_leaky_k, check_window
from harness.methods.rope import logn_scale

VARIANTS = ("code", "paper")
STAIR = "stair"
# The last chunk's rules besides Stair PE (the paper's Figure 9), named as the methods whose rule they are.
LAST_CHUNK_RULES: dict[str, type[ReRoPE]] = {rule.name: rule for rule in (ReRoPE, LeakyReRoPE)}


@dataclass(frozen=True)
class ChunkPlan:
    """How one input is cut. Queries in [0, first_end) form the first chunk, each (start, end) in
    ``middle`` a middle chunk, and [last_start, input_length) the last chunk. ``last_start == 0``
    means no chunking (one ordinary causal pass). ``chunk_width`` is C, also used while decoding."""

    input_length: int
    first_end: int
    middle: tuple[tuple[int, int], ...]
    last_start: int
    chunk_width: int


def mesa_chunk_plan(
    input_length: int,
    train_length: int,
    first_chunk: int = 100,
    last_chunk: int = 512,
    reserve_new_tokens: int = 50,
    first_chunk_cache: int = 100,
    min_remainder: int = 200,
    variant: str = "code",
) -> ChunkPlan:
    """DynamicSplit: a pure function of the input length and the parameters.

    code (released implementation): X = I + reserve - L - F, D = T - F - first_chunk_cache;
    chunking starts at I >= T - reserve. paper (Algorithm 2): X = I - L - F, D = T - F; chunking
    starts at I > T. Both: N = X // D, M = X % D; C = D if M < min_remainder else X // (N + 1).
    Middle chunks of width C follow the first chunk while another C tokens still leave at least
    one token after them; the rest is the last chunk (the reference's loop).
    """
    if variant not in VARIANTS:
        raise HarnessError(f"mesa variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "code":
        x = input_length + reserve_new_tokens - last_chunk - first_chunk
        d = train_length - first_chunk - first_chunk_cache
        chunked = input_length >= train_length - reserve_new_tokens
    else:
        x = input_length - last_chunk - first_chunk
        d = train_length - first_chunk
        chunked = input_length > train_length
    if d <= 0:
        raise HarnessError(
            f"mesa: first_chunk ({first_chunk}) leaves no room for middle chunks within train_length ({train_length})"
        )
    width = d
    if x > 0 and x % d >= min_remainder:
        width = x // (x // d + 1)
    if width + first_chunk > train_length:
        raise HarnessError(f"mesa: chunk width {width} + first_chunk {first_chunk} exceeds train_length {train_length}")
    if not chunked or first_chunk >= input_length:
        return ChunkPlan(input_length, 0, (), 0, width)
    middle, start = [], first_chunk
    while start + width < input_length:
        middle.append((start, start + width))
        start += width
    return ChunkPlan(input_length, first_chunk, tuple(middle), start, width)


def stair_top(kv_length: int, chunk_width: int, train_length: int) -> int | None:
    """S, the index from which keys keep their true positions (None: no stair, kv_length <= T)."""
    if kv_length <= train_length:
        return None
    return kv_length - (kv_length - 1) % chunk_width  # the last P = (kv_length - 1) mod C keys stay true


def stair_positions(kv_length: int, chunk_width: int, stair_width: int, train_length: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Woven positions (kv_length,) of the released code's Stair PE; ordinary positions up to T."""
    index = torch.arange(kv_length, device=device)
    top = stair_top(kv_length, chunk_width, train_length)
    if top is None:
        return index
    return torch.where(index >= top, index, top - 1 - torch.div(top - 1 - index, stair_width, rounding_mode="floor"))


class Mesa(WeaveMethod):
    """Mesa-Extrapolation with the released code's defaults (see the module docstring).

    Cached decoding is approximate: a prefill is cut into chunks by its length, while decoding keeps
    the prompt's chunk plan and attends over the whole cache with Stair PE, as the released code does."""

    name = "mesa"
    label = "Mesa"
    color = "#d62728"
    marker = "D"
    order = 40
    cached_decoding = "approximate"
    decode_key_copies = 1  # the stair-rotated keys (a last-chunk rule's own count replaces it)
    length_params = ("first_chunk", "last_chunk", "stair_width", "stair_position", "first_chunk_cache", "min_remainder",
                     "last_chunk_window")
    # Added after Mesa rows were committed: at their defaults (Stair PE) they stay out of the results hash.
    hash_neutral = ("last_chunk_rule", "last_chunk_window", "last_chunk_leaky_k")

    def __init__(
        self,
        train_length: int,
        first_chunk: int = 100,
        last_chunk: int = 512,
        stair_width: int = 50,
        reserve_new_tokens: int = 50,
        variant: str = "code",
        stair_position: int = 512,
        logn: bool = True,
        first_chunk_cache: int = 100,
        min_remainder: int = 200,
        last_chunk_rule: str = STAIR,
        last_chunk_window: int = 512,
        last_chunk_leaky_k: float | str = 16,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        super().__init__(train_length)
        rules = (STAIR, *LAST_CHUNK_RULES)
        if last_chunk_rule not in rules:
            raise HarnessError(f"mesa last_chunk_rule must be one of {rules}, got {last_chunk_rule!r}")
        check_window(last_chunk_window, "mesa last_chunk_window")
        check_leaky_k(last_chunk_leaky_k, "mesa last_chunk_leaky_k")
        for key, value in dict(first_chunk=first_chunk, last_chunk=last_chunk, stair_width=stair_width,
                               stair_position=stair_position).items():
            if not isinstance(value, int) or value <= 0:
                raise HarnessError(f"mesa {key} must be a positive integer, got {value!r}")
        if not isinstance(reserve_new_tokens, int) or reserve_new_tokens < 0:
            raise HarnessError(f"mesa reserve_new_tokens must be a non-negative integer, got {reserve_new_tokens!r}")
        self.plan_params = dict(
            train_length=train_length, first_chunk=first_chunk, last_chunk=last_chunk,
            reserve_new_tokens=reserve_new_tokens, first_chunk_cache=first_chunk_cache,
            min_remainder=min_remainder, variant=variant,
        )
        self.plan(train_length + 1)  # validates the parameters now rather than mid-sweep
        self.stair_width = stair_width
        self.variant = variant
        self.stair_position = stair_position
        self.logn = logn
        self.block_bytes = block_bytes
        self.last_chunk_rule = last_chunk_rule
        # The last chunk's rule (None: Stair PE): a ReRoPE or Leaky-ReRoPE used for its window and far
        # positions only; this method rotates, caches keys and applies log-n (harness.methods.near_far).
        self.last_rule: NearFarMethod | None = None
        if last_chunk_rule != STAIR:
            rule = LAST_CHUNK_RULES[last_chunk_rule]
            settings = dict(window=last_chunk_window, leaky_k=last_chunk_leaky_k)
            try:
                self.last_rule = rule(train_length, **{k: v for k, v in settings.items() if k in rule.parameters()},
                                      logn=False, block_bytes=block_bytes)
            except HarnessError as error:  # e.g. leaky_k 'auto' with a window >= train_length
                raise HarnessError(f"mesa last_chunk_rule {last_chunk_rule!r}: {error}") from None
            self.decode_key_copies = self.last_rule.decode_key_copies

    def prefill_attention_bytes(self, shape, length, dtype_bytes, attn_implementation):
        """Stair-rotated keys, the stacked middle chunks (q, k, v, out ~ 4 x (L, H, D)) and the last
        chunk's two parts; explicit kernels add the scores of one query block and their softmax.
        With a last-chunk rule, at most the larger of that and the rule's own whole prefill."""
        per_token = shape.heads * shape.head_dim * dtype_bytes
        kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
        chunked = (length * kv_per_token + 4 * length * per_token
                   + (2 * self.block_bytes if attn_implementation == "eager" else 0))
        if self.last_rule is None:
            return chunked
        return max(chunked, self.last_rule.prefill_attention_bytes(shape, length, dtype_bytes, attn_implementation))

    def plan(self, input_length: int) -> ChunkPlan:
        return mesa_chunk_plan(input_length, **self.plan_params)

    def begin_forward(self, state: dict[str, Any], past_length: int, new_length: int) -> None:
        super().begin_forward(state, past_length, new_length)
        if past_length == 0 or "plan" not in state:
            state["plan"] = self.plan(past_length + new_length)

    # -- ALiBi (module docstring) -----------------------------------------------------------------
    def _alibi_triangle(self, query_count: int, key_count: int) -> ChunkPlan | None:
        """The chunk plan when this forward is a chunked prefill (its queries are all the keys), else None."""
        plan: ChunkPlan = self.state["plan"]
        return plan if query_count == key_count and plan.last_start > 0 else None

    def alibi_distances(self, query_index, key_count):
        """Stair distances (or the last-chunk rule's) over every earlier key; in a chunked prefill,
        the first and middle chunks' queries see the first chunk plus their own chunk, the middle
        ones as if placed right after the first chunk (module docstring)."""
        plan: ChunkPlan = self.state["plan"]
        distance, key_index = pair_distances(query_index, key_count)
        visible = distance >= 0
        if self.last_rule is not None:  # ReRoPE's min(d, w) or Leaky-ReRoPE's w + (d - w) / k
            stair = self.last_rule.alibi_distances(query_index, key_count)[0]
        elif self.variant == "paper" and key_count > self.train_length:
            n, e = self.stair_position, self.stair_width
            stair = torch.where(distance <= n, distance, n + torch.div(distance - n + e - 1, e, rounding_mode="floor"))
        else:
            woven = stair_positions(key_count, plan.chunk_width, self.stair_width, self.train_length,
                                    device=query_index.device)
            stair = woven[query_index][:, None] - woven[None, :]
        triangle = self._alibi_triangle(query_index.shape[0], key_count)
        if triangle is None:
            return stair.to(torch.float32), visible
        f, width = triangle.first_end, triangle.chunk_width
        # A middle chunk query's shift: its chunk starts at F + shift (0 in the first chunk).
        shift = torch.where(query_index >= f, torch.div(query_index - f, width, rounding_mode="floor") * width, 0)
        in_first = (key_index < f)[None, :]
        chunk_distance = torch.where(in_first, distance - shift[:, None], distance)
        chunk_visible = visible & (in_first | (key_index[None, :] >= f + shift[:, None]))
        in_triangle = (query_index < triangle.last_start)[:, None]
        return (torch.where(in_triangle, chunk_distance, stair).to(torch.float32),
                torch.where(in_triangle, chunk_visible, visible))

    def alibi_query_scale(self, query_index, key_count):
        """log-n for the queries that use Stair PE (not the first and middle chunks' queries)."""
        if not self.logn or key_count <= self.train_length:
            return None
        factor = logn_scale(query_index + 1, self.train_length)
        triangle = self._alibi_triangle(query_index.shape[0], key_count)
        if triangle is not None:
            factor = torch.where((query_index < triangle.last_start)[:, None], 1.0, factor)
        return factor

    # ------------------------------------------------------------------------------------------
    def attend(self, layer_idx, query, key, value, scaling):
        lq, lk = query.shape[2], key.shape[2]
        plan: ChunkPlan = self.state["plan"]
        if lq < lk or plan.last_start == 0:  # decoding / continuing, or an unchunked prefill
            return self._attend_all(layer_idx, query, key, value, scaling, lk - lq, decoding=lq < lk)
        out = torch.empty_like(query)
        self._attend_first_and_middle(query, key, value, scaling, plan, out)
        s = plan.last_start
        out[:, :, s:] = self._attend_all(layer_idx, query[:, :, s:], key, value, scaling, s)
        return out

    def _attend_first_and_middle(self, query, key, value, scaling, plan: ChunkPlan, out) -> None:
        """First chunk, and every middle chunk as [first chunk; chunk] at positions 0..F+C-1.

        The middle chunks are consecutive and all of width C, so they are stacked into one batch
        of sequences "first chunk + chunk" and run as plain causal attention (which the fused
        kernels run without a mask, skipping the masked half); rows F.. of each sequence are the
        chunk's output, and rows ..F of any of them are the first chunk's.
        """
        f = plan.first_end
        first = torch.arange(f, device=query.device)
        q_first, k_first = self.rope(query[:, :, :f], first, "first"), self.rope(key[:, :, :f], first, "first")
        if not plan.middle:
            out[:, :, :f] = causal_attention(q_first, k_first, value[:, :, :f], scaling, self.kernels, self.block_bytes)
            return
        b, heads, _, dim = query.shape
        n, width = len(plan.middle), plan.chunk_width
        end = f + n * width  # == plan.middle[-1][1]
        local = torch.arange(f, f + width, device=query.device)  # each chunk as if right after the first chunk

        def stacked(x: torch.Tensor, x_first: torch.Tensor, rotate: bool) -> torch.Tensor:
            """(B, h, L, D) -> (B * n, h, F + C, D): [first chunk; chunk i] for every middle chunk i."""
            chunks = x[:, :, f:end].unflatten(2, (n, width))  # a view: (B, h, n, C, D)
            seq = x.new_empty((b, n, x.shape[1], f + width, dim))
            seq[:, :, :, :f] = x_first[:, None]
            seq[:, :, :, f:] = (self.rope(chunks, local, "middle") if rotate else chunks).transpose(1, 2)
            return seq.view(b * n, x.shape[1], f + width, dim)

        result = causal_attention(
            stacked(query, q_first, True), stacked(key, k_first, True), stacked(value, value[:, :, :f], False),
            scaling, self.kernels, self.block_bytes,
        ).view(b, n, heads, f + width, dim)
        out[:, :, :f] = result[:, 0, :, :f]
        out[:, :, f:end] = result[:, :, :, f:].transpose(1, 2).reshape(b, heads, n * width, dim)

    def _attend_all(self, layer_idx, query, key, value, scaling, query_start: int, decoding=False):
        """The Lq queries at true indices query_start.. (the last Lq of the Lk keys) over all keys
        with Stair PE or the last-chunk rule (last chunk, decoding); causal: query t sees keys 0..t."""
        lq, lk = query.shape[2], key.shape[2]
        if self.logn:
            query = query * self.logn_factor(query_start, lq, query)
        if self.last_rule is not None:  # ReRoPE's near/far attention, with this method's rotations
            if decoding:
                return near_far_cached(self, self.last_rule, layer_idx, query, key, value, scaling)
            return near_far_prefill(self, self.last_rule, query, key, value, scaling)
        if self.variant == "paper" and lk > self.train_length:
            return self._paper_stair(layer_idx, query, key, value, scaling, query_start, decoding)
        positions, layout = self._stair_positions(lk, query.device)
        woven_key = self.rotated_keys(layer_idx, "stair", key, positions, keep=decoding, layout=layout)
        woven_query = self.rope(query, positions[query_start : query_start + lq], "woven-queries")
        return self._tail_attention(woven_query, woven_key, value, scaling)

    def _tail_attention(self, query, key, value, scaling):
        """Queries that are the last Lq of the Lk keys (lower-right causal): the earlier keys (all
        visible) and the queries' own keys (top-left causal) as two fused attentions, merged."""
        if query.shape[2] == 1 and self.kernels == "fused":  # one decoding step sees every key: no mask at all
            return grouped_sdpa(query, key, value, scaling)
        return trailing_causal_attention_with_lse(query, key, value, scaling, self.kernels, self.block_bytes)[0]

    def _stair_positions(self, kv_length: int, device: torch.device) -> tuple[torch.Tensor, object]:
        """Stair positions for ``kv_length`` keys on ``device`` (computed once per forward, not per
        layer) and their layout."""
        def make():
            width = self.state["plan"].chunk_width
            top = stair_top(kv_length, width, self.train_length)
            positions = stair_positions(kv_length, width, self.stair_width, self.train_length, device=device)
            return positions, "true" if top is None else ("stair", top)

        return self.per_forward(("stair", kv_length, device), make)

    def _paper_stair(self, layer_idx, query, key, value, scaling, query_start: int, decoding):
        """Eq. 3 with constant N and ceil: exact per pair, via the residues of t - N and j modulo E.

        With t - N = aE + alpha and j = bE + beta: ceil((d - N) / E) = a - b + [alpha > beta],
        so far pairs use the query at N + a (+1 where alpha > beta) and the key at b.
        """
        n, e = self.stair_position, self.stair_width
        device = query.device
        query_index = torch.arange(query_start, query_start + query.shape[2], device=device)
        key_index = torch.arange(key.shape[2], device=device)
        group = torch.div(query_index - n, e, rounding_mode="floor")
        far_key = self.rotated_keys(layer_idx, "paper-far", key, torch.div(key_index, e, rounding_mode="floor"),
                                    decoding, layout="grouped")

        def above(q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
            return (k_idx % e)[None, :] < ((q_idx - n) % e)[:, None]

        return banded_two_rule_attention(
            self.rope(query, query_index),
            self.rotated_keys(layer_idx, "near", key, key_index, decoding, layout="true"),
            [self.rope(query, n + group), self.rope(query, n + group + 1)], [far_key, far_key],
            value, query_start, band=n + 1, scaling=scaling, far_select=above, block_bytes=self.block_bytes,
        )

"""The ALiBi path (MPT): every method as a distance fed to the model's own attention bias.

An ALiBi model (harness.architectures, positions ``"alibi"``) has no rotary module: head h adds
-m_h * (t - j) to the score of query t and key j, m_h the head's slope. transformers' MPT builds
that bias once per forward with ``MptModel.build_mpt_alibi_tensor(H, max_seq_len, 8, device)``
as (H, 1, max_seq_len) values -m_h * (max_seq_len - 1 - c), i.e. -m_h * (t - j) up to a constant
per query, which softmax ignores. Each attention then slices
``bias[:, max(0, size(1) - Lq'):, max(0, size(2) - K):]`` (Lq' >= Lq), adds it to its
(B, H, Lq, K) scores ``q k^T * softmax_scale`` and masks j > t. Past ``max_seq_len`` that bias is
too short and the stock model fails.

A method on an ALiBi model is two things per pair, stated by the method class next to its RoPE
rule (:meth:`~harness.methods.method.Method.alibi_distances`): the distance W(t, j) it feeds the
bias, and whether key j is visible to query t (causal included). :func:`attach_alibi` installs
it without copying any modeling code:

1. the decoder's bias builder (the method named by the architecture table, replaced by an
   instance attribute, so the class stays stock) becomes :class:`AlibiBias`, which returns
   -m_h * W(t, j) for this forward's queries and keys, (H, Lq, K) float32 (the stock bias's
   dtype), -inf where a key is invisible (the diagonal always is visible); a bias of exactly
   (H, Lq, K) passes MPT's slicing whole. W of shape (1, K) gives an (H, 1, K) bias, as stock;
2. a forward pre-hook on the decoder learns each forward's cached and new lengths (the cache's
   ``get_seq_length()``) and gives weave methods their per-sequence state (Mesa's chunk plan),
   exactly as the RoPE path does (:func:`harness.methods.base.sequence_state`);
3. log-n query scaling (``Method.alibi_query_scale``: ReRoPE, Leaky-ReRoPE, Mesa with
   ``logn``) multiplies each attention module's ``softmax_scale`` by a (Lq, 1) factor for that
   forward; the scores are ``q k^T * softmax_scale``, so this is the queries scaled, as on RoPE.

The slopes are MPT's own: -``build(H, 2, alibi_bias_max)[:, 0, 0]`` of the stock builder, called
with the ``alibi_bias_max`` the model passes it. No ``max_seq_len`` needs raising (MPT's own way
to extrapolate): the replacement ignores the length it is asked for and covers any length.

Origin on an ALiBi model is plain ALiBi extrapolation, W = t - j and every earlier key visible,
at any length: the stock (H, 1, K) bias with K keys instead of max_seq_len. The other methods'
rules (the method modules say where each is taken from or inferred):

* ReRoPE: W = min(d, w); Leaky-ReRoPE: d below w, w + (d - w) / k beyond (d = t - j);
* Self-Extend: d inside the neighbour window, grouped distance floor(t / G) + w - floor(w / G)
  - floor(j / G) beyond;
* StreamingLLM: the first ``sink`` keys and the last ``window`` keys visible, at the distance
  between their cache slots; LM-Infinite: the Lambda mask, global keys at the distance limit;
* Mesa: chunk-triangular visibility in a chunked prefill (middle chunks placed right after the
  first chunk), Stair distances in the last chunk and while decoding.

Memory: the bias is built once per forward and shared by every layer (MPT passes the same
tensor to every block): (H, Lq, K) float32, O(L^2) in a prefill like MPT's own eager scores,
which this path keeps (H, Lq, K per layer; ``Method.alibi_prefill_attention_bytes``). Decoding
steps build (H, 1, K).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.architectures import ARCHITECTURES, architecture_of, model_type_of, rope_kind
from harness.methods.base import WeaveMethod, sequence_state
from harness.methods.method import Method


def is_alibi(model: nn.Module) -> bool:
    """Whether ``model``'s positions are ALiBi (False for a model outside the architecture table)."""
    return model_type_of(model) in ARCHITECTURES and rope_kind(model) == "alibi"


def pair_distances(query_index: torch.Tensor, key_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The true distances d = t - j (Lq, K) int64 of the queries at ``query_index`` (Lq,) and keys
    0..K-1 (negative: a later key), and the key indices (K,), on ``query_index``'s device."""
    key_index = torch.arange(key_count, device=query_index.device)
    return query_index[:, None] - key_index[None, :], key_index


def alibi_slopes(build, num_heads: int, alibi_bias_max, device) -> torch.Tensor:
    """The model's slopes m_h (H,) float32, from its own bias builder ``build``: at two keys its
    first column is -m_h * 1."""
    return -build(num_heads, 2, alibi_bias_max, device=device)[:, 0, 0]


class AlibiBias:
    """Stands in for the decoder's bias builder: (H, Lq, K) = -m_h * W, -inf where invisible.

    ``past`` and ``new`` (cached and new tokens of the current forward) are set by the pre-hook."""

    def __init__(self, method: Method, original):
        self.method = method
        self.original = original  # the stock builder (a bound method)
        self.past, self.new = 0, 0

    def __call__(self, num_heads: int, sequence_length: int, alibi_bias_max=8, device=None) -> torch.Tensor:
        key_count = self.past + self.new
        query_index = torch.arange(self.past, key_count, device=device)
        distance, visible = self.method.alibi_distances(query_index, key_count)
        slopes = alibi_slopes(self.original, num_heads, alibi_bias_max, device)
        bias = distance.to(torch.float32)[None] * -slopes[:, None, None]  # (H, Lq or 1, K)
        if visible is not None:
            bias.masked_fill_(~visible[None], float("-inf"))  # in place: one (H, Lq, K) tensor
        return bias


def _alibi_pre_hook(decoder: nn.Module, args: tuple, kwargs: dict):
    """Before each decoder forward: the lengths for the bias, the method's per-sequence state,
    and this forward's log-n factors on every attention module."""
    bias: AlibiBias = decoder.harness_alibi
    method = bias.method
    weave = isinstance(method, WeaveMethod)
    # Origin keeps MPT's padded batches (its bias is the stock one); the others index keys by position.
    state, past, inputs = sequence_state(decoder, method, args, kwargs, refuse_padding=weave)
    new = inputs.shape[1]
    if weave:
        method.begin_forward(state, past_length=past, new_length=new)
    bias.past, bias.new = past, new
    query_index = torch.arange(past, past + new, device=inputs.device)
    scale = method.alibi_query_scale(query_index, past + new)
    on_device = {}
    for module, softmax_scale in decoder.harness_softmax_scales:
        if scale is None:
            module.softmax_scale = softmax_scale
            continue
        device = next(module.parameters()).device
        if device not in on_device:
            on_device[device] = scale.to(device)
        module.softmax_scale = softmax_scale * on_device[device]  # (Lq, 1): scores (B, H, Lq, K)
    return args, kwargs


def attach_alibi(model: nn.Module, method: Method) -> None:
    """Install ``method`` on the ALiBi ``model`` (in place); see the module docstring."""
    architecture = architecture_of(model)
    decoder = architecture.decoder_of(model)
    name = architecture.alibi_builder
    attention_modules = architecture.attention_modules(model)
    had_own = name in decoder.__dict__
    previous = decoder.__dict__.get(name)
    bias = AlibiBias(method, getattr(decoder, name))
    decoder.harness_alibi = bias
    decoder.harness_softmax_scales = [(module, module.softmax_scale) for module in attention_modules]
    setattr(decoder, name, bias)
    handle = decoder.register_forward_pre_hook(_alibi_pre_hook, with_kwargs=True)

    def undo() -> None:
        handle.remove()
        if had_own:
            setattr(decoder, name, previous)
        else:
            delattr(decoder, name)
        for module, softmax_scale in decoder.harness_softmax_scales:
            module.softmax_scale = softmax_scale
        del decoder.harness_alibi, decoder.harness_softmax_scales

    model._harness_undo = undo


def eager_alibi_attention_bytes(heads: int, length: int, dtype_bytes: int, bias_rows: int) -> int:
    """One layer's transient attention memory in MPT's eager attention during a prefill of
    ``length`` tokens, with a float32 bias of ``bias_rows`` rows per head (``length`` for a
    per-pair bias, 1 for the stock one).

    The scores q k^T * scale (model dtype), then + bias (float32: the bias promotes them), the
    causal mask filled in (float32), its softmax (float32) and that cast back: at most two float32
    (H, L, L) tensors and one in the model's dtype alive at once; plus the bias, built once per
    forward, and the causal mask (L, L) bool."""
    square = heads * length * length
    return (2 * 4 + dtype_bytes) * square + 4 * heads * bias_rows * length + length * length

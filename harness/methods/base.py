"""How a method is attached to a Hugging Face model, through transformers' own extension points.

Weave methods (ReRoPE, Leaky-ReRoPE, Mesa) need queries and keys UN-rotated, and the KV cache to
hold un-rotated keys, because the position a key is rotated to depends on the query looking at it.
We get that without copying any modeling file:

1. the model's rotary module (``rotary_emb`` of the decoder stack that harness.architectures
   names, an instance attribute) is replaced by :class:`IdentityRotary`, which returns cos = 1,
   sin = 0: the stock ``apply_rotary_pos_emb`` then leaves q/k bit-exactly unchanged (the
   pass-through channels of partial rotary too), and the stock cache stores un-rotated keys;
2. one attention function, registered with ``AttentionInterface`` under :data:`ATTENTION_NAME`,
   is selected with ``model.set_attn_implementation``; it finds the method object on the
   attention module it is called for (``module.harness_method``), so two models with two methods
   in one process never see each other's settings;
3. a forward pre-hook on the decoder gives the method per-sequence state (Mesa's chunk plan,
   rotated-key caches) stored on the KV-cache object, so state lives exactly as long as the
   generation it belongs to and nothing leaks between samples.

ALiBi models (MPT) have no rotary module: there a weave method is a distance fed to the model's
own attention bias (harness.methods.alibi), with the same pre-hook state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.architectures import architecture_of, rope_kind
from harness.constants import EAGER, SDPA
from harness.errors import HarnessError, UnsupportedModelError
from harness.methods.method import Method
from harness.methods.rope import apply_rope_tables, logn_scale, rope_cos_sin

ATTENTION_NAME = "harness_weave"

# The model's attention implementation (as loaded) decides which kernels a weave method uses.
KERNELS_OF_IMPLEMENTATION = {SDPA: "fused", EAGER: "explicit"}
# Room for this many more keys is allocated whenever a rotated-key buffer grows.
_KEY_BUFFER_STEP = 256


class IdentityRotary(nn.Module):
    """Stands in for the model's rotary module and returns cos = 1, sin = 0.

    Shapes follow the wrapped module: (batch, seq, rotary_dim), so partial-rotary models keep
    their pass-through channels. The original module stays reachable as ``.original`` so the
    methods can read its frequencies.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original
        self.rotary_dim = 2 * original.inv_freq.shape[-1]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.rotary_dim)
        return torch.ones(shape, dtype=x.dtype, device=x.device), torch.zeros(shape, dtype=x.dtype, device=x.device)


class WeaveMethod(Method):
    """Base class of the methods that choose q/k positions inside attention.

    Subclasses implement :meth:`attend`. Per-call information arrives through :meth:`begin_forward`
    (called once per model forward, before any layer runs).
    """

    sliding_window = False  # a weave method attends over every cached key; a sliding window drops old ones
    # LongRoPE (Phi-3-128k): the frequencies of the true total length, chosen per forward (bind).
    # ALiBi (MPT): each weave method's rule as a distance fed to the bias (alibi_distances).
    rope_kinds = ("full", "partial", "longrope", "alibi")

    def __init__(self, train_length: int):
        super().__init__(train_length)
        self.inv_freq: torch.Tensor | None = None
        self.attention_scaling = 1.0
        # LongRoPE: {"short": inv_freq, "long": inv_freq} and the total length up to which "short"
        # holds; None for RoPE whose frequencies do not depend on the length.
        self.frequency_regimes: dict[str, torch.Tensor] | None = None
        self.short_up_to = 0
        self.regime = "static"  # which frequencies this forward uses; part of every rotated-key layout
        self.state: dict[str, Any] = {}
        # "fused" (the device's flash/efficient kernels) or "explicit" (matmul + softmax); set by
        # attach_weave from the model's attn_implementation (sdpa -> fused, eager -> explicit).
        self.kernels = "fused"
        self.shared: dict[tuple, Any] = {}

    def attach(self, model: nn.Module) -> None:
        """Identity rotary module, the weave attention function and the per-sequence hook (module
        docstring); on an ALiBi model, the method's distances as the attention bias instead
        (harness.methods.alibi)."""
        self.check_model(model)
        if rope_kind(model) == "alibi":
            from harness.methods.alibi import attach_alibi  # alibi builds on this module

            attach_alibi(model, self)
        else:
            attach_weave(model, self)

    # -- lifecycle -------------------------------------------------------------------------
    def bind(self, rotary: nn.Module) -> None:
        """Take the RoPE frequencies from the model's original rotary module.

        LongRoPE's frequencies depend on the length: the model's own rope function gives the short
        factors' frequencies for a total length <= original_max_position_embeddings and the long
        factors' beyond; ``attention_scaling`` is the same in both. The choice follows the true
        total length (cached + new keys), as stock transformers' does for ordinary positions. A
        cache cannot carry a sequence across the switch exactly: the hidden states of earlier
        tokens, and so every later layer's keys, were computed with the short factors. generate()
        therefore drops the cache there (Phi-3's prepare_inputs_for_generation) and the method
        starts a new sequence state with it; a hand-written cached loop that crosses the switch
        gets its cached keys re-rotated with the long factors, not a recomputation."""
        self.inv_freq = rotary.inv_freq.detach().clone()
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.frequency_regimes, self.regime = None, "static"
        if getattr(rotary, "rope_type", "default") == "longrope":
            init = ROPE_INIT_FUNCTIONS["longrope"]
            device = rotary.inv_freq.device
            short, self.attention_scaling = init(rotary.config, device)  # standardizes rope_parameters first
            self.short_up_to = int(rotary.config.rope_parameters["original_max_position_embeddings"])
            long, _ = init(rotary.config, device, seq_len=self.short_up_to + 1)
            self.frequency_regimes = {"short": short, "long": long}
            self.regime, self.inv_freq = "short", short

    def begin_forward(self, state: dict[str, Any], past_length: int, new_length: int) -> None:
        """Called before each model forward. ``state`` persists across the forwards of one sequence."""
        self.state = state
        self.shared: dict[tuple, Any] = {}  # what every layer of this forward computes alike (see per_forward)
        if self.frequency_regimes is not None:
            self.regime = "long" if past_length + new_length > self.short_up_to else "short"
            self.inv_freq = self.frequency_regimes[self.regime]

    # -- helpers for subclasses ------------------------------------------------------------
    def per_forward(self, key: tuple, make):
        """``make()``, computed by the first layer of this forward and reused by the others.

        ``key`` must name everything the value depends on that can differ between layers (the
        device, when a model is spread over several). Decoding a 7B model runs 32 layers per
        token, so per-layer position arithmetic (cos/sin tables, log-n factors) is kernel launches
        that Origin, whose rotary tables are computed once per forward, does not pay.
        """
        value = self.shared.get(key)
        if value is None:
            value = self.shared[key] = make()
        return value

    def rope(self, x: torch.Tensor, positions: torch.Tensor, table: str | None = None) -> torch.Tensor:
        """``x`` (..., n, D) rotated to ``positions`` (n,). With ``table`` (a name for these
        positions within this forward), the cos/sin tables are computed once for all layers."""
        if table is None:
            cos, sin = rope_cos_sin(positions, self.inv_freq, self.attention_scaling, x.dtype)
        else:
            cos, sin = self.per_forward(
                ("rope", table, positions.shape[0], x.device, x.dtype),
                lambda: rope_cos_sin(positions, self.inv_freq.to(x.device), self.attention_scaling, x.dtype))
        return apply_rope_tables(x, cos, sin)

    def rotated_keys(
        self, layer_idx: int, tag: str, keys: torch.Tensor, positions: torch.Tensor, keep: bool, layout: object
    ) -> torch.Tensor:
        """``keys`` (B, KVH, Lk, D) rotated to ``positions`` (Lk,), reusing the previous step's work.

        ``layout`` names the rule that produced ``positions`` such that two lengths with the same
        layout give the same positions to the keys they share (``"true"`` for ordinary positions,
        Mesa's ``("stair", S)`` while its stair top S stands still). During decoding the cache only
        grows, so while the layout stays the same the rotated prefix is kept and only new keys are
        rotated; comparing layouts, not position tensors, never waits for the GPU. ``keep=False``
        (a prefill) does not store the result: a prefill-only workload then never holds a second
        copy of the keys, and decoding pays one full rotation at its first step.
        """
        length = positions.shape[0]
        layout = (self.regime, layout)  # keys rotated with LongRoPE's short factors are stale once it switches
        if not (keep and self.state.get("persist", False)):
            return self.rope(keys, positions, table=f"{tag}-keys-0-{length}")
        store = self.state.setdefault("rotated_keys", {})
        entry = store.get((layer_idx, tag))
        if entry is not None:
            old_layout, n, buffer = entry
            if old_layout == layout and n <= length and buffer.shape[:2] == keys.shape[:2]:
                if length > buffer.shape[2]:  # grow in steps, so decoding does not copy the cache each token
                    grown = keys.new_empty((*keys.shape[:2], length + _KEY_BUFFER_STEP, keys.shape[3]))
                    grown[:, :, :n] = buffer[:, :, :n]
                    buffer = grown
                buffer[:, :, n:length] = self.rope(keys[:, :, n:], positions[n:], table=f"{tag}-keys-{n}-{length}")
                store[(layer_idx, tag)] = (layout, length, buffer)
                return buffer[:, :, :length]
        buffer = keys.new_empty((*keys.shape[:2], length + _KEY_BUFFER_STEP, keys.shape[3]))
        buffer[:, :, :length] = self.rope(keys, positions, table=f"{tag}-keys-0-{length}")
        store[(layer_idx, tag)] = (layout, length, buffer)
        return buffer[:, :, :length]

    def logn_factor(self, query_start: int, count: int, like: torch.Tensor) -> torch.Tensor:
        """log-n factors (count, 1) of the queries at true indices query_start.., in ``like``'s dtype."""
        def make():
            positions = torch.arange(query_start + 1, query_start + count + 1, device=like.device)
            return logn_scale(positions, self.train_length).to(like.dtype)

        return self.per_forward(("logn", query_start, count, like.device, like.dtype), make)

    def attend(
        self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """query (B, H, Lq, D), key/value (B, KVH, Lk, D), all un-rotated; the last Lq keys belong to
        the queries. Returns the attention output (B, H, Lq, D)."""
        raise NotImplementedError


def _weave_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered with transformers' AttentionInterface (shapes as in ``attend``)."""
    method = getattr(module, "harness_method", None)
    if method is None:
        raise HarnessError(
            f"attention implementation {ATTENTION_NAME!r} is selected but no method is attached; use apply_method()"
        )
    window = kwargs.get("sliding_window")
    if window is not None and window < key.shape[2]:  # a window longer than the sequence drops nothing
        raise UnsupportedModelError(
            f"method {method.name!r} does not support sliding-window attention: this layer's window of {window} "
            f"tokens is shorter than the {key.shape[2]} keys"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    output = method.attend(module.layer_idx, query, key, value, scaling)
    return output.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """Weave methods build their own (chunk-aware, causal) masks; transformers need not build one."""
    return None


AttentionInterface.register(ATTENTION_NAME, _weave_attention)
AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)


def sequence_state(decoder: nn.Module, method: Method, args: tuple, kwargs: dict,
                   refuse_padding: bool = True) -> tuple[dict[str, Any], int, torch.Tensor]:
    """What a decoder forward pre-hook learns before each forward: the per-sequence state, the
    number of cached tokens, and the forward's input (ids (B, L) or embeddings (B, L, width)).

    The state lives on the KV-cache object (created here, plain full-attention layers, when the
    forward will use a cache and none was passed: ``kwargs`` gets it), so it lasts exactly as long
    as the generation it belongs to; without a cache it is a fresh dict that is not kept."""
    mask = kwargs.get("attention_mask")
    if refuse_padding and isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
        raise HarnessError(f"method {method.name!r} does not support padded batches; run one sequence at a time")
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs["inputs_embeds"]
    cache_key = "cache" if "cache" in kwargs or "past_key_values" not in kwargs else "past_key_values"
    cache = kwargs.get(cache_key)
    use_cache = kwargs.get("use_cache")
    if use_cache is None:
        use_cache = decoder.config.use_cache
    if cache is None and use_cache:
        cache = DynamicCache()
        kwargs[cache_key] = cache
    past = cache.get_seq_length() if cache is not None else 0
    if cache is None:
        return {"persist": False}, past, inputs
    state = cache.__dict__.setdefault("_harness_state", {})
    if past == 0:  # a new sequence in a reused cache object
        state.clear()
    state["persist"] = True
    return state, past, inputs


def _forward_pre_hook(decoder: nn.Module, args: tuple, kwargs: dict):
    """Give the attached method per-sequence state before each decoder forward."""
    method: WeaveMethod = decoder.harness_method
    state, past, inputs = sequence_state(decoder, method, args, kwargs)
    method.begin_forward(state, past_length=past, new_length=inputs.shape[1])
    return args, kwargs


def attach_weave(model: nn.Module, method: WeaveMethod) -> None:
    """Install ``method`` on ``model`` (in place); see the module docstring for the mechanism."""
    architecture = architecture_of(model)
    decoder = architecture.decoder_of(model)
    attention_modules = architecture.attention_modules(model)
    method.bind(decoder.rotary_emb)
    original_implementation = model.config._attn_implementation
    method.kernels = KERNELS_OF_IMPLEMENTATION.get(original_implementation)
    if method.kernels is None:
        raise UnsupportedModelError(
            f"method {method.name!r} supports attn_implementation {' or '.join(KERNELS_OF_IMPLEMENTATION)}, "
            f"not {original_implementation!r}; set model.attn_implementation=sdpa"
        )
    decoder.rotary_emb = IdentityRotary(decoder.rotary_emb)
    decoder.harness_method = method
    for module in attention_modules:
        module.harness_method = method
    handle = decoder.register_forward_pre_hook(_forward_pre_hook, with_kwargs=True)

    def undo() -> None:
        handle.remove()
        decoder.rotary_emb = decoder.rotary_emb.original
        del decoder.harness_method
        for module in attention_modules:
            del module.harness_method
        model.set_attn_implementation(original_implementation)

    model.set_attn_implementation(ATTENTION_NAME)
    model._harness_undo = undo

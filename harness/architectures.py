"""What the harness knows about each model architecture, in one table keyed by ``model_type``.

Methods, plan mode, the tests and the docs read :data:`ARCHITECTURES`; nothing else names a
``model_type``. Adding an architecture is one :class:`Architecture` entry here plus tests
(``tests/conftest.py`` builds a tiny random model of every entry):

* where the decoder stack, its layers and each layer's attention module are (attribute names);
* how positions enter attention: ``"rope"`` (a model-level rotary module whose cos/sin every
  attention applies to q/k; full, partial or LongRoPE, read from the config by :func:`rope_kind`)
  or ``"alibi"`` (a per-head linear bias on the scores, built by the model);
* the config key whose non-null value means sliding-window attention (besides ``layer_types``);
* the config key of the context length (the default training length of the methods);
* for ALiBi models, the decoder's method that builds the bias (harness.methods.alibi replaces it);
* the config keys of the shape plan mode needs, and how many parameters that shape has.

A model whose type is not in the table can still run Origin (the stock model); every other
method refuses it with one line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from harness.errors import UnsupportedModelError

# How positions reach attention, per model (see rope_kind): the methods state which they support.
ROPE_KINDS = ("full", "partial", "longrope", "alibi")
# RoPE types whose frequencies do not depend on the input length, so one inv_freq serves all positions.
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Shape:
    """What plan mode's memory estimate needs from a model: sizes, and the parameter count."""

    vocab: int
    width: int  # the model (residual stream) dimension
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    parameters: int
    positions: str = "rope"  # the architecture's: "rope" or "alibi" (plan mode counts ALiBi's bias)


def _gated_mlp_parameters(s: Shape) -> int:
    """LLaMA-style decoder: q/k/v/o without biases, a gated MLP (3 matrices), two RMSNorms per layer."""
    attention = s.width * s.head_dim * (2 * s.heads + 2 * s.kv_heads)
    layer = attention + 3 * s.width * s.intermediate + 2 * s.width
    return s.vocab * s.width * (1 if s.tied else 2) + s.layers * layer + s.width


def _qwen2_parameters(s: Shape) -> int:
    """Qwen2: LLaMA's, plus biases on q, k and v."""
    return _gated_mlp_parameters(s) + s.layers * s.head_dim * (s.heads + 2 * s.kv_heads)


def _qwen3_parameters(s: Shape) -> int:
    """Qwen3: LLaMA's, plus an RMSNorm on each head's q and k."""
    return _gated_mlp_parameters(s) + s.layers * 2 * s.head_dim


def _gpt_neox_parameters(s: Shape) -> int:
    """GPT-NeoX: fused qkv and dense with biases, a 2-matrix MLP with biases, two LayerNorms per layer."""
    attention = 4 * s.width * s.width + 4 * s.width
    mlp = 2 * s.width * s.intermediate + s.intermediate + s.width
    layer = attention + mlp + 4 * s.width
    return s.vocab * s.width * (1 if s.tied else 2) + s.layers * layer + 2 * s.width


def _mpt_parameters(s: Shape) -> int:
    """MPT (no_bias): fused qkv and out_proj, a 2-matrix MLP, two LayerNorms without bias per layer."""
    layer = 4 * s.width * s.width + 2 * s.width * s.intermediate + 2 * s.width
    return s.vocab * s.width * (1 if s.tied else 2) + s.layers * layer + s.width


# Config key names of the shape, LLaMA's; an entry overrides those its config names differently.
LLAMA_SHAPE_KEYS = dict(vocab="vocab_size", width="hidden_size", layers="num_hidden_layers",
                        heads="num_attention_heads", kv_heads="num_key_value_heads", head_dim="head_dim",
                        intermediate="intermediate_size", tied="tie_word_embeddings")


@dataclass(frozen=True)
class Architecture:
    """One model architecture as the harness sees it (module docstring)."""

    model_type: str
    decoder: str = "model"  # attribute of the *ForCausalLM that holds the decoder stack
    layers: str = "layers"  # attribute of the decoder that holds its layers
    attention: str = "self_attn"  # attribute of a layer that holds its attention module
    positions: str = "rope"  # "rope" or "alibi"
    sliding_window_key: str | None = None  # config key: a window shorter than max_position_embeddings
    partial_rotary_key: str = "partial_rotary_factor"  # config key: the share of each head's channels rotated
    context_key: str = "max_position_embeddings"  # config key: the context length the model advertises
    shape_keys: Mapping[str, str] = field(default_factory=dict)  # overrides of LLAMA_SHAPE_KEYS
    count_parameters: Callable[[Shape], int] = _gated_mlp_parameters
    # The MLP width where the config gives none (MPT: 4 x d_model).
    intermediate_from: Callable[[Mapping], int] | None = None
    alibi_builder: str | None = None  # ALiBi: the decoder's method that returns the bias (H, Lq, K)

    def decoder_of(self, model: nn.Module) -> nn.Module:
        """The decoder stack of ``model`` (a *ForCausalLM, or the decoder itself)."""
        decoder = getattr(model, self.decoder, model)
        if not hasattr(decoder, self.layers):
            raise UnsupportedModelError(f"model type {self.model_type!r}: no {self.layers!r} in its decoder stack")
        return decoder

    def layers_of(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of ``model``, in order."""
        return getattr(self.decoder_of(model), self.layers)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every layer's attention module, in layer order."""
        return [getattr(layer, self.attention) for layer in self.layers_of(model)]

    def uses_sliding_window(self, config) -> bool:
        """Whether some layer attends through a window shorter than the model's context (which
        would drop keys every method but the rotary-only ones needs)."""
        if "sliding_attention" in (getattr(config, "layer_types", None) or []):
            return True
        window = getattr(config, self.sliding_window_key, None) if self.sliding_window_key else None
        return window is not None and window < (context_length(config) or window + 1)

    def shape(self, config: Mapping) -> Shape:
        """The shape of a config (a dict, e.g. config.json or the YAML's ``architecture``)."""
        keys = {**LLAMA_SHAPE_KEYS, **self.shape_keys}
        heads, hidden = int(config[keys["heads"]]), int(config[keys["width"]])
        if self.intermediate_from is not None:
            intermediate = int(self.intermediate_from(config))
        else:
            intermediate = int(config[keys["intermediate"]])
        sizes = dict(vocab=int(config[keys["vocab"]]), width=hidden, layers=int(config[keys["layers"]]), heads=heads,
                     kv_heads=int(config.get(keys["kv_heads"]) or heads),
                     head_dim=int(config.get(keys["head_dim"]) or hidden // heads), intermediate=intermediate,
                     tied=bool(config.get(keys["tied"], self.positions == "alibi")), positions=self.positions)
        return Shape(**sizes, parameters=self.count_parameters(Shape(**sizes, parameters=0)))


ARCHITECTURES: dict[str, Architecture] = {
    entry.model_type: entry
    for entry in (
        Architecture("llama"),
        Architecture("mistral", sliding_window_key="sliding_window"),
        Architecture("qwen2", count_parameters=_qwen2_parameters),  # sliding layers are named in layer_types
        Architecture("qwen3", count_parameters=_qwen3_parameters),
        # Phi-3-mini-128k's config has sliding_window 262144, longer than its context: full attention.
        Architecture("phi3", sliding_window_key="sliding_window"),
        # Pythia: partial rotary (rotary_pct 0.25 of each head), parallel residual, biases everywhere.
        Architecture("gpt_neox", decoder="gpt_neox", attention="attention", partial_rotary_key="rotary_pct",
                     count_parameters=_gpt_neox_parameters),
        # MPT-7B: ALiBi, no rotary module; attention is MPT's own eager matmul with an additive bias.
        # transformers' MptMLP is 4 x d_model whatever the config's expansion_ratio says.
        Architecture("mpt", decoder="transformer", layers="blocks", attention="attn", positions="alibi",
                     context_key="max_seq_len",
                     shape_keys=dict(width="d_model", layers="n_layers", heads="n_heads", kv_heads="n_heads"),
                     count_parameters=_mpt_parameters, intermediate_from=lambda c: 4 * int(c["d_model"]),
                     alibi_builder="build_mpt_alibi_tensor"),
    )
}


def model_type_of(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", type(model_or_config).__name__)


def architecture_named(model_type: str) -> Architecture:
    """The table's entry for ``model_type``; one line naming the supported types if there is none."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not in the architecture table; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def architecture_of(model: nn.Module) -> Architecture:
    """The table's entry for a loaded ``model`` (or its transformers config)."""
    return architecture_named(model_type_of(model))


# The model type of an ``architecture`` dict that names none (the LLaMA shape of most paper models).
DEFAULT_MODEL_TYPE = "llama"


def architecture_for(config: Mapping) -> Architecture:
    """The entry of a config dict (``model_type`` absent: :data:`DEFAULT_MODEL_TYPE`)."""
    return architecture_named(config.get("model_type", DEFAULT_MODEL_TYPE))


def _entry_and_getter(model_or_config, strict: bool = True) -> tuple[Architecture, Callable]:
    """The table entry of a model, its transformers config or a config dict, and ``get(key,
    default)`` on that config. ``strict=False``: a type outside the table reads as
    :data:`DEFAULT_MODEL_TYPE`'s entry (its key names) instead of being refused."""
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, Mapping):
        model_type, get = config.get("model_type", DEFAULT_MODEL_TYPE), config.get
    else:
        model_type = model_type_of(config)

        def get(key, default=None):
            return getattr(config, key, default)
    if not strict and model_type not in ARCHITECTURES:
        model_type = DEFAULT_MODEL_TYPE
    return architecture_named(model_type), get


def context_length(model_or_config) -> int | None:
    """The context length a model's config advertises (max_position_embeddings, MPT's max_seq_len);
    a model, its transformers config, or a config dict (a type outside the table: max_position_embeddings)."""
    architecture, get = _entry_and_getter(model_or_config, strict=False)
    value = get(architecture.context_key)
    return None if value is None else int(value)


def rope_kind(model_or_config) -> str:
    """How positions reach attention: one of :data:`ROPE_KINDS`, or the rope type's own name where
    its frequencies depend on the length in a way no method handles (e.g. dynamic).

    Takes a model, its transformers config, or a config dict (plan mode's ``architecture``)."""
    architecture, get = _entry_and_getter(model_or_config)
    if architecture.positions == "alibi":
        return "alibi"
    parameters = get("rope_parameters") or get("rope_scaling") or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type == "longrope":
        return "longrope"
    if rope_type not in STATIC_ROPE_TYPES:
        return rope_type
    factor = parameters.get("partial_rotary_factor", get(architecture.partial_rotary_key, 1.0))
    return "partial" if factor is not None and float(factor) < 1.0 else "full"

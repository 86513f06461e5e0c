"""What a method is: one class that states its own facts, and the registry of those classes.

Every method is a subclass of :class:`Method` that sets ``name``; defining the class registers it
in :data:`METHODS` under that name (``__init_subclass__``), so nothing else lists method names.
The class states, once:

* who it is in tables and figures: ``name``, ``label``, ``color``, ``marker``, ``order``;
* its parameters and their defaults: the keyword arguments of its ``__init__`` after
  ``train_length``. ``conf/method/<name>.yaml`` lists the same keys with the same values (and
  ``_target_``, the class); a config key the class does not take is refused with one line;
* what plan mode needs to estimate its memory: ``decode_key_copies`` and
  :meth:`prefill_attention_bytes` (:meth:`alibi_prefill_attention_bytes` on ALiBi models);
* which of its parameters are lengths in tokens (``length_params``), which ``method.length_scale``
  multiplies (its released defaults were chosen for a model's training length; a model trained
  longer may want them scaled: see :func:`scale_lengths`);
* which parameters were added after rows were committed (``hash_neutral``): at their defaults they
  stay out of the results hash, so those rows' files keep their names (``hash_neutral_defaults``);
* what it supports: ``rope_kinds`` (how positions reach attention, per harness.architectures),
  ``sliding_window``, ``cached_decoding``;
* how it changes a model: :meth:`attach`; on ALiBi models (``"alibi"`` in ``rope_kinds``), its
  rule as a distance and a visibility per pair, :meth:`alibi_distances` (harness.methods.alibi).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from harness.architectures import architecture_of, model_type_of, rope_kind
from harness.errors import HarnessError, UnsupportedModelError
from harness.registry import register
from harness.validation import require_integer

# "exact": decoding with the KV cache gives the logits of recomputing the whole sequence;
# "approximate": it does not, by construction (the class docstring says why).
CACHED_DECODING = ("exact", "approximate")

# name -> class of every method defined so far; ``import harness.methods`` defines the built-in ones.
METHODS: dict[str, type[Method]] = {}


class Method(ABC):
    """A position-encoding method, with all its settings, for a model trained at ``train_length`` tokens."""

    name: ClassVar[str]
    label: ClassVar[str]  # in figures and tables
    color: ClassVar[str]  # one colour and marker per method in every figure
    marker: ClassVar[str]
    order: ClassVar[int]  # position in legends and tables (then by name)
    # Supports: how positions reach attention (harness.architectures.ROPE_KINDS; None: any model,
    # even one outside the architecture table), sliding-window attention layers, cached decoding.
    rope_kinds: ClassVar[tuple[str, ...] | None] = ("full", "partial")
    sliding_window: ClassVar[bool] = False
    cached_decoding: ClassVar[str] = "exact"
    # Memory for plan mode: copies of one layer's K cache the method keeps per layer while decoding.
    decode_key_copies: ClassVar[int] = 0
    # Parameters that are lengths in tokens (windows, chunk widths): ``method.length_scale`` multiplies them.
    length_params: ClassVar[tuple[str, ...]] = ()
    # Parameters added after rows were committed. At their default (the signature's, which
    # ``hash_neutral_defaults`` holds) harness.job.results_path leaves them out of the results hash,
    # so the committed files keep their names and stay resumable (as tasks' ``hash_neutral_defaults``).
    hash_neutral: ClassVar[tuple[str, ...]] = ()
    hash_neutral_defaults: ClassVar[dict[str, object]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a base class for other methods (e.g. WeaveMethod)
            return
        missing = [fact for fact in ("label", "color", "marker", "order") if not hasattr(cls, fact)]
        if missing:
            raise TypeError(f"method class {cls.__qualname__} ({cls.name!r}) does not state its {', '.join(missing)}")
        if cls.cached_decoding not in CACHED_DECODING:
            raise TypeError(f"method {cls.name!r}: cached_decoding must be one of {CACHED_DECODING}")
        defaults = cls.parameters()
        empty = inspect.Parameter.empty
        no_default = [p for p in cls.hash_neutral if defaults.get(p, empty) is empty]
        if no_default:
            raise TypeError(f"method {cls.name!r}: hash_neutral names {', '.join(no_default)}, "
                            "which are not parameters with a default")
        cls.hash_neutral_defaults = {p: defaults[p] for p in cls.hash_neutral}
        register(METHODS, cls, "method")

    def __init__(self, train_length: int):
        self.train_length = require_integer(train_length, "train_length")

    @classmethod
    def parameters(cls) -> dict[str, object]:
        """The parameters the method takes, with their defaults (``inspect.Parameter.empty``: required)."""
        params = inspect.signature(cls.__init__).parameters
        return {k: p.default for k, p in params.items() if k != "self"}

    @abstractmethod
    def attach(self, model: nn.Module) -> None:
        """Change ``model`` in place into this method; set ``model._harness_undo`` to restore it."""

    def prefill_attention_bytes(self, shape, length: int, dtype_bytes: int, attn_implementation: str) -> int:
        """Transient memory (bytes) of one layer's attention during a prefill of ``length`` tokens,
        beyond q, k and v. ``shape`` has ``heads``, ``kv_heads`` and ``head_dim`` (harness.plan.Shape).

        This is transformers' own attention: eager builds the (H, L, L) scores and their softmax;
        SDPA repeats K and V to every head for grouped-query attention, plus its output."""
        if attn_implementation == "eager":
            return 2 * shape.heads * length * length * dtype_bytes
        return 3 * length * shape.heads * shape.head_dim * dtype_bytes

    def check_positions(self, model_type: str, kind: str) -> None:
        """Refuse, in one line, a model whose positions (harness.architectures.rope_kind) this method
        does not handle; plan mode asks this of a config, attaching of a model."""
        if self.rope_kinds is not None and kind not in self.rope_kinds:
            raise UnsupportedModelError(
                f"method {self.name!r} cannot be applied to model type {model_type!r}, whose positions are {kind!r}; "
                f"it supports: {', '.join(self.rope_kinds)}"
            )

    def alibi_prefill_attention_bytes(self, shape, length: int, dtype_bytes: int) -> int:
        """:meth:`prefill_attention_bytes` on an ALiBi model: MPT's own eager attention with this
        method's bias, (H, L, L) float32 (harness.methods.alibi.eager_alibi_attention_bytes)."""
        from harness.methods.alibi import eager_alibi_attention_bytes

        return eager_alibi_attention_bytes(shape.heads, length, dtype_bytes, bias_rows=length)

    def alibi_distances(self, query_index: torch.Tensor, key_count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """On an ALiBi model: the distance W(t, j) this method feeds the bias -m_h * W of query t
        and key j, and which keys each query sees (harness.methods.alibi).

        ``query_index`` (Lq,) int64: the true indices of this forward's queries, the last Lq of
        the ``key_count`` keys (K). Returns distance (Lq, K) float32, or (1, K) when it is the same
        for every query up to a per-query constant (which softmax ignores); and visible (Lq, K)
        bool, causal included, the diagonal always True, or None for plain causal attention (the
        model's own mask). Called once per forward, not per layer."""
        raise NotImplementedError(f"method {self.name!r} has no ALiBi rule")

    def alibi_query_scale(self, query_index: torch.Tensor, key_count: int) -> torch.Tensor | None:
        """On an ALiBi model: a factor (Lq, 1) float32 multiplying the queries at ``query_index``
        (log-n scaling), or None for none."""
        return None

    def check_model(self, model: nn.Module) -> nn.Module:
        """Refuse, with a clear message, a model this method cannot handle. Returns the decoder stack."""
        try:
            architecture = architecture_of(model)
        except UnsupportedModelError as error:
            raise UnsupportedModelError(f"method {self.name!r}: {error}") from None
        model_type = architecture.model_type
        self.check_positions(model_type, rope_kind(model))
        if architecture.uses_sliding_window(model.config) and not self.sliding_window:
            raise UnsupportedModelError(
                f"method {self.name!r} does not support sliding-window attention (model type {model_type!r}); "
                "set the config's sliding_window to null for a full-attention model"
            )
        return architecture.decoder_of(model)


class RotaryMethod(Method):
    """Base class of the methods that change only the model's rotary module (its frequencies), and
    so leave attention, the KV cache and sliding-window layers to the model."""

    sliding_window = True

    @abstractmethod
    def rotary_for(self, model: nn.Module, original: nn.Module) -> nn.Module:
        """The module that replaces ``original`` (the model's plain-RoPE rotary module); it returns
        (cos, sin) of shape (B, L, rotary_dim) as ``original`` does."""

    def attach(self, model: nn.Module) -> None:
        """Replace the decoder's rotary module (an instance attribute); undo puts the original back."""
        decoder = self.check_model(model)
        original = decoder.rotary_emb
        if getattr(original, "rope_type", "default") != "default":
            raise UnsupportedModelError(
                f"method {self.name!r} needs plain RoPE; model type {model_type_of(model)!r} "
                f"uses rope_type {original.rope_type!r}"
            )
        decoder.rotary_emb = self.rotary_for(model, original)

        def undo() -> None:
            decoder.rotary_emb = original

        model._harness_undo = undo


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for LLaMA, ``model.gpt_neox`` for Pythia, ...; see
    harness.architectures) that owns the layers and, for RoPE models, ``rotary_emb``."""
    return architecture_of(model).decoder_of(model)


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; one clear line if there is none."""
    if name not in METHODS:
        raise HarnessError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return METHODS[name]


def method_names() -> list[str]:
    """Every registered method's name, in the methods' own ``order`` (then by name)."""
    return sorted(METHODS, key=lambda name: (METHODS[name].order, name))


def scale_lengths(name: str, params: dict, scale) -> dict:
    """``params`` of method ``name`` with its ``length_params`` multiplied by ``scale`` (rounded to
    whole tokens; a parameter left at None stays None). ``scale`` 1 returns them unchanged. Used as
    ``+method.length_scale=4``: the released settings of a 2k-token model for a model trained at 8k."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise HarnessError(f"method.length_scale must be a positive number, e.g. 4; got {scale!r}")
    if scale == 1:
        return params
    cls = method_class(name)
    if not cls.length_params:
        raise HarnessError(f"method {name!r} has no settings in tokens for method.length_scale to scale; remove it")
    defaults = cls.parameters()
    scaled = dict(params)
    for key in cls.length_params:
        value = params.get(key, defaults[key])
        if value is not None:
            scaled[key] = max(1, round(value * scale))
    return scaled


def build_method(name: str, default_train_length: int | None, **params) -> Method:
    """Method ``name`` with ``params`` (``None`` or absent: the class's default); a ``train_length``
    that is None or absent is ``default_train_length`` (the model's). Unknown parameters are refused
    with one line."""
    cls = method_class(name)
    accepted = cls.parameters()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise HarnessError(
            f"unknown parameter(s) {', '.join(unknown)} for method {name!r}; accepted: {', '.join(accepted)}"
        )
    params = {k: v for k, v in params.items() if v is not None}
    params.setdefault("train_length", default_train_length)
    return cls(**params)

"""The five extrapolation methods, applied in place to a loaded Hugging Face causal LM.

    from harness.methods import apply_method
    apply_method(model, "mesa", stair_width=20)   # returns the same model
    model.generate(...)                           # prefill + KV-cached decoding keep working

Names: origin, dynamic-ntk, rerope, leaky-rerope, mesa. ``train_length`` defaults to the model's
training length (``model.harness_train_length`` set by ``harness.models``, else the config's
``max_position_embeddings``). Applying a method to a model that already has one first restores
the original model, so methods never stack.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from harness.errors import HarnessError
from harness.methods.base import attach_weave, check_supported
from harness.methods.dynamic_ntk import attach_dynamic_ntk
from harness.methods.mesa import Mesa, mesa_chunk_plan, stair_positions
from harness.methods.rerope import ReRoPE


def _origin(model: nn.Module, train_length: int) -> None:
    """Unchanged RoPE: the stock model, untouched."""


def _dynamic_ntk(model: nn.Module, train_length: int, factor: float = 2.0) -> None:
    attach_dynamic_ntk(model, train_length, factor)


def _rerope(model: nn.Module, train_length: int, window: int = 512, logn: bool = True, block_bytes: int = 64 * 2**20) -> None:
    check_supported(model, "rerope")
    attach_weave(model, ReRoPE(train_length, window=window, leaky_k=None, logn=logn, block_bytes=block_bytes))


def _leaky_rerope(
    model: nn.Module, train_length: int, window: int = 512, leaky_k: float | str = 16, logn: bool = True,
    block_bytes: int = 64 * 2**20,
) -> None:
    check_supported(model, "leaky-rerope")
    attach_weave(model, ReRoPE(train_length, window=window, leaky_k=leaky_k, logn=logn, block_bytes=block_bytes))


def _mesa(model: nn.Module, train_length: int, **params) -> None:
    check_supported(model, "mesa")
    attach_weave(model, Mesa(train_length, **params))


# Mesa's parameters are those of the Mesa class, so the config and the API cannot drift apart.
_mesa.__signature__ = inspect.Signature(
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + list(inspect.signature(Mesa.__init__).parameters.values())[1:]
)

METHODS: dict[str, Callable[..., None]] = {
    "origin": _origin,
    "dynamic-ntk": _dynamic_ntk,
    "rerope": _rerope,
    "leaky-rerope": _leaky_rerope,
    "mesa": _mesa,
}


def method_parameters(name: str) -> dict[str, object]:
    """The parameters a method accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
    if name not in METHODS:
        raise HarnessError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    params = inspect.signature(METHODS[name]).parameters
    return {k: p.default for k, p in params.items() if k != "model"}


def remove_method(model: nn.Module) -> nn.Module:
    """Restore the model as it was before ``apply_method``."""
    undo = getattr(model, "_harness_undo", None)
    if undo is not None:
        undo()
        del model._harness_undo
    model.harness_method_name = "origin"
    return model


def apply_method(model: nn.Module, name: str, **params) -> nn.Module:
    """Turn ``model`` into method ``name`` in place and return it. ``None`` values mean "default"."""
    accepted = method_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise HarnessError(
            f"unknown parameter(s) {', '.join(unknown)} for method {name!r}; accepted: {', '.join(accepted)}"
        )
    params = {k: v for k, v in params.items() if v is not None}
    if params.get("train_length") is None:
        params["train_length"] = getattr(model, "harness_train_length", None) or model.config.max_position_embeddings
    remove_method(model)
    METHODS[name](model, **params)
    model.harness_method_name = name
    return model


__all__ = ["METHODS", "apply_method", "method_parameters", "remove_method", "mesa_chunk_plan", "stair_positions"]

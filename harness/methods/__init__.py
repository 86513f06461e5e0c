"""Extrapolation methods, applied in place to a loaded Hugging Face causal LM.

    from harness.methods import apply_method
    apply_method(model, "mesa", stair_width=20)   # returns the same model
    model.generate(...)                           # prefill + KV-cached decoding keep working

A method is one module in this package plus one config, ``conf/method/<name>.yaml``:

* the module defines a subclass of :class:`~harness.methods.method.Method` that sets ``name`` and
  states the method's label, colour, parameters (its ``__init__``), memory needs and what it
  supports; defining the class registers it in :data:`METHODS`;
* importing this package imports every module in it (``pkgutil``), so every method here is
  registered without a list of names anywhere: plan mode, figures, results and the benchmark ask
  the registry;
* the config names the class in ``_target_`` and lists its parameters with their defaults; the
  runner and plan mode build the method from it (:func:`method_from_config`), like tasks.

``train_length`` defaults to the model's training length (``model.harness_train_length`` set by
``harness.models``, else the config's context length, e.g. ``max_position_embeddings``). Applying a method to a model
that already has one first restores the original model, so methods never stack.
"""

from __future__ import annotations

import importlib
import pkgutil

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.architectures import context_length
from harness.errors import HarnessError
from harness.methods.mesa import mesa_chunk_plan, stair_positions
from harness.methods.method import METHODS, Method, build_method, method_class, method_names, scale_lengths

for _module in pkgutil.iter_modules(__path__):  # each method module registers its class
    importlib.import_module(f"{__name__}.{_module.name}")


def method_parameters(name: str) -> dict[str, object]:
    """The parameters method ``name`` accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
    return method_class(name).parameters()


def method_settings(method_cfg: DictConfig) -> tuple[str, dict]:
    """(name, parameters) of a ``conf/method`` node: the parameters are what the method's class
    takes, i.e. every key but ``name``, ``_target_`` (the class that builds it) and
    ``length_scale`` (optional, added with ``+method.length_scale=4``: the parameters returned are
    then the scaled ones, see :func:`~harness.methods.method.scale_lengths`)."""
    params = OmegaConf.to_container(method_cfg, resolve=True)
    name = params.pop("name")
    params.pop("_target_", None)
    return name, scale_lengths(name, params, params.pop("length_scale", 1))


def method_class_of(method_cfg: DictConfig | dict) -> type[Method]:
    """The class a ``conf/method`` node names in ``_target_`` (imported, which registers it). A
    config saved beside rows committed before ``_target_`` existed has none: its name says which
    registered class it is."""
    name = method_cfg.get("name")
    target = method_cfg.get("_target_")
    if not target:
        return method_class(name)
    try:
        cls = get_class(target)  # imports the class's module, which registers the method
    except Exception as error:  # noqa: BLE001 - Hydra reports a bad path in several exception types
        raise HarnessError(f"method {name!r}: cannot import _target_ {target!r} "
                           f"({str(error).splitlines()[0]})") from None
    if getattr(cls, "name", None) != name or METHODS.get(name) is not cls:
        raise HarnessError(f"method config {name!r} names class {target!r}, which is not the method {name!r}")
    return cls


def method_from_config(method_cfg: DictConfig | dict, default_train_length: int | None) -> Method:
    """The method a ``conf/method`` node describes: its ``_target_`` class with its parameters.
    ``default_train_length`` (the model's) is used where the config's ``train_length`` is null."""
    if not isinstance(method_cfg, DictConfig):
        method_cfg = OmegaConf.create(method_cfg)
    name, params = method_settings(method_cfg)
    if not method_cfg.get("_target_"):
        raise HarnessError(f"method config {name!r} has no _target_ (the class of the method)")
    method_class_of(method_cfg)  # imports and checks the class
    return build_method(name, default_train_length, **params)


def remove_method(model: nn.Module) -> nn.Module:
    """Restore the model as it was before ``apply_method``."""
    undo = getattr(model, "_harness_undo", None)
    if undo is not None:
        undo()
        del model._harness_undo
    model.harness_method_name = None  # the stock model again
    return model


def apply_method(model: nn.Module, method: str | Method, **params) -> nn.Module:
    """Turn ``model`` into ``method`` in place and return it.

    ``method`` is a name (then ``params`` are its parameters; ``None`` values mean "default") or
    a :class:`Method` already built (e.g. by :func:`method_from_config`)."""
    if isinstance(method, str):
        default_train_length = getattr(model, "harness_train_length", None) or context_length(model)
        method = build_method(method, default_train_length, **params)
    elif params:
        raise HarnessError(f"apply_method got a built method {method.name!r} and parameters {sorted(params)}")
    remove_method(model)
    method.attach(model)
    model.harness_method_name = method.name
    return model


__all__ = ["METHODS", "Method", "apply_method", "method_class_of", "method_from_config", "method_names",
           "method_parameters", "method_settings", "remove_method", "mesa_chunk_plan", "stair_positions"]

"""Registries of classes by name (methods in harness.methods.method.METHODS, tasks in
tasks.base.TASKS): defining a subclass that sets ``name`` registers it, so no file lists names."""

from __future__ import annotations


def register(registry: dict[str, type], cls: type, kind: str) -> None:
    """Put ``cls`` in ``registry`` under ``cls.name``. Another class with that name is a TypeError
    naming both (``kind`` says what they are: "method", "task"); the same class defined again (its
    module imported a second time, e.g. under another name) replaces its entry."""
    other = registry.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"two {kind} classes are named {cls.name!r}: {other.__qualname__} and {cls.__qualname__}")
    registry[cls.name] = cls

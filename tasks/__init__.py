"""The tasks. Importing this package imports every module in it, and each task module registers
its class (a ``tasks.base.Task`` subclass that sets ``name``) in :data:`TASKS`: plan mode, the
runner, collect, compare and the figures read a task's facts from there (and hand harness.results
what a task's rows hold), and no file lists task names."""

from __future__ import annotations

import importlib
import pkgutil

from tasks.base import TASKS, Task

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def task_by_name(name: str) -> type[Task] | None:
    """The class of task ``name`` (the ``task`` column of a row), or None for a task this checkout lacks."""
    return TASKS.get(name)


__all__ = ["TASKS", "Task", "task_by_name"]

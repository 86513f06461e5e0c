"""Checks of typed settings (config values, method and task parameters), each one line on failure.

YAML and the command line give ints, floats and bools; Python counts True as an int, so "an
integer" here means an int that is not a bool. Every parameter check of the harness goes through
:func:`is_integer` or :func:`require_integer`, so they all read the same way and say the same.
"""

from __future__ import annotations

from harness.errors import HarnessError


def is_integer(value, minimum: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) and, if ``minimum`` is given, at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(value) -> bool:
    """Whether ``value`` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_integer(value, what: str, minimum: int | None = 1, nullable: bool = False):
    """``value`` if it is an integer >= ``minimum`` (or None, when ``nullable``); else a
    HarnessError: "<what> must be a positive integer (or null), got <value>"."""
    if (value is None and nullable) or is_integer(value, minimum):
        return value
    wanted = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    raise HarnessError(f"{what} must be {wanted}{' or null' if nullable else ''}, got {value!r}")

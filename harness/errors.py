"""Errors the harness reports to users as one clear line (no traceback)."""


class HarnessError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""


class UnsupportedModelError(HarnessError):
    """A method cannot be applied to this model (architecture, RoPE type, attention layout)."""


class ModelNotAvailableError(HarnessError):
    """A model's weights cannot be found: not downloaded, the Hub unreachable, or a bad local path."""

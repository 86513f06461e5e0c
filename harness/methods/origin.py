"""Origin: the model's unchanged RoPE, i.e. the stock transformers model, untouched."""

from __future__ import annotations

from torch import nn

from harness.methods.method import Method


class Origin(Method):
    """The baseline every other method is compared with; it works on any model."""

    name = "origin"
    label = "Origin"
    color = "#444444"
    marker = "o"
    order = 0
    rope_kinds = None  # the stock model: any architecture
    sliding_window = True

    def __init__(self, train_length: int):
        super().__init__(train_length)

    def attach(self, model: nn.Module) -> None:
        """Nothing to change: the stock model is Origin."""

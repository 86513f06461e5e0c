"""Dynamic-NTK: grow the RoPE base with the current length (bloc97/emozilla, transformers' "dynamic").

For a current length L > T: base' = base * (factor * L / T - (factor - 1)) ** (d / (d - 2)),
d the rotary dimension. Below T the original frequencies are used, so the method equals Origin.

Unlike transformers' stock dynamic rotary module, this one is stateless: the base is a pure
function of the largest position in the current forward, so a long sample never leaves a scaled
base behind for the next, shorter one. Keys already in the KV cache keep the base they were
rotated with (as in every Dynamic-NTK implementation with a rotated-key cache), so cached decoding
past T is NOT exactly equal to recomputing the whole sequence at the new length: each decode step
grows the base a little and only the new key sees it.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.methods.method import RotaryMethod
from harness.methods.rope import rope_cos_sin
from harness.validation import is_number


def dynamic_ntk_inv_freq(base: float, rotary_dim: int, length: int, train_length: int, factor: float,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies (rotary_dim / 2,) float32 on ``device`` for a sequence of ``length`` tokens."""
    if length > train_length:
        base = base * (factor * length / train_length - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).to(torch.float) / rotary_dim
    return 1.0 / (base**exponents)


class DynamicNTKRotary(nn.Module):
    """Drop-in replacement for a model's rotary module; returns (cos, sin) of shape (B, L, rotary_dim)."""

    def __init__(self, original: nn.Module, base: float, train_length: int, factor: float):
        super().__init__()
        self.original = original
        self.base = base
        self.train_length = train_length
        self.factor = factor
        self.rotary_dim = 2 * original.inv_freq.shape[-1]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = int(position_ids.max()) + 1
        inv_freq = dynamic_ntk_inv_freq(self.base, self.rotary_dim, length, self.train_length, self.factor,
                                        device=position_ids.device)
        cos, sin = rope_cos_sin(position_ids.reshape(-1), inv_freq, 1.0, x.dtype)
        return cos.view(*position_ids.shape, -1), sin.view(*position_ids.shape, -1)


class DynamicNTK(RotaryMethod):
    """Dynamic-NTK with ``factor`` (the paper gives none; 2.0 is transformers' usual choice).

    Cached decoding is approximate: cached keys keep the base they were rotated with (see above)."""

    name = "dynamic-ntk"
    label = "Dynamic-NTK"
    color = "#1f77b4"
    marker = "s"
    order = 10
    cached_decoding = "approximate"

    def __init__(self, train_length: int, factor: float = 2.0):
        super().__init__(train_length)
        if not is_number(factor) or factor < 1:
            raise HarnessError(f"dynamic-ntk factor must be >= 1, got {factor!r}")
        self.factor = float(factor)

    def rotary_for(self, model: nn.Module, original: nn.Module) -> nn.Module:
        """A stateless rotary module whose base grows with the current length."""
        return DynamicNTKRotary(original, float(model.config.rope_parameters["rope_theta"]), self.train_length,
                                self.factor)

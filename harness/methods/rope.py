"""Rotary position embedding at arbitrary (possibly fractional, possibly repeated) positions.

Every method in this package receives queries and keys UN-rotated and decides itself at which
position to rotate each of them. These helpers reproduce transformers' RoPE arithmetic exactly
(angles in float32, cos/sin cast to the tensor's dtype, ``rotate_half`` layout, partial rotary
dimensions left untouched) so that "rotate at the true position" is bit-compatible with the stock
model.
"""

from __future__ import annotations

import math

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension, the layout used by HF LLaMA-family models."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for ``positions`` (n,) -> two (n, rotary_dim) tensors in ``dtype``."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(device=positions.device, dtype=torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * attention_scaling).to(dtype), (emb.sin() * attention_scaling).to(dtype)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0
) -> torch.Tensor:
    """Rotate ``x`` (..., n, head_dim) so that row i sits at ``positions[i]``.

    Only the first ``2 * len(inv_freq)`` channels are rotated (partial rotary, e.g. Phi-3);
    the rest pass through unchanged.
    """
    cos, sin = rope_cos_sin(positions, inv_freq, attention_scaling, x.dtype)
    return apply_rope_tables(x, cos, sin)


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` with its (n, rotary_dim) cos/sin tables already computed (e.g. shared by every layer)."""
    rotary_dim, half = cos.shape[-1], cos.shape[-1] // 2
    # x * cos + rotate_half(x) * sin, written without rotate_half's concatenated copy.
    if rotary_dim == x.shape[-1]:
        out = x * cos
    else:
        out = x.clone()
        out[..., :rotary_dim] *= cos
    out[..., :half].addcmul_(x[..., half:rotary_dim], sin[..., :half], value=-1)
    out[..., half:rotary_dim].addcmul_(x[..., :half], sin[..., half:])
    return out


def logn_scale(positions_1based: torch.Tensor, train_length: int) -> torch.Tensor:
    """log-n query scaling used by the ReRoPE and Mesa reference code: max(1, ln p / ln T).

    Returns a (n, 1) float32 factor to multiply the queries by; it is exactly 1 inside the training
    length, so methods with log-n still equal Origin on short inputs.
    """
    p = positions_1based.to(torch.float32)
    return (p.log() / math.log(train_length)).clamp(min=1.0)[:, None]

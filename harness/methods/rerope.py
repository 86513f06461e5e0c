"""ReRoPE and Leaky-ReRoPE (Su, bojone/rerope): clip or compress relative distances beyond a window.

Relative distance d between a query and a key becomes
  * ReRoPE:        W(d) = min(d, w);
  * Leaky-ReRoPE:  W(d) = d for d < w, else w + (d - w) / k.
The paper sets 1/k = (T - w) / (L - w) per input (``leaky_k: auto``) so the farthest token lands
exactly at the training length T; the reference code uses a fixed k = 16.

Far pairs are computed by rotating the query to w + (t - w) / k and the key to j / k (for ReRoPE
1/k = 0: the query at w, the key un-rotated), which gives exactly W(d) for every far pair; near
pairs use ordinary RoPE. The reference materialises both full L x L score matrices; here the
near band and the far part are two attentions merged by their log-sum-exp
(harness.methods.near_far).

ALiBi models (MPT; harness.methods.alibi): the bias gets the same W, -m_h * min(d, w) (ReRoPE)
or -m_h * (w + (d - w) / k) beyond w (Leaky-ReRoPE; ``auto``: k from the current key count), every
earlier key visible, log-n query scaling as on RoPE. Inferred: the reference code is for RoPE
models only. Both methods are defined as a map from the true distance to the one the model sees,
and ALiBi's bias is a function of that distance alone, so the map transfers unchanged; with
ALiBi, ReRoPE's clip also stops the bias from growing past -m_h * w, so far keys are no longer
suppressed by distance (ALiBi's own way of extrapolating, which Origin keeps).
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.methods.attention import DEFAULT_BLOCK_BYTES
from harness.methods.near_far import NearFarMethod


def check_window(window, name: str = "window") -> int:
    """The window w, a positive integer; else one line naming ``name`` (Mesa checks its
    ``last_chunk_window`` here too)."""
    if not isinstance(window, int) or window <= 0:
        raise HarnessError(f"{name} must be a positive integer, got {window!r}")
    return window


def check_leaky_k(leaky_k, name: str = "leaky_k") -> float | str:
    """Leaky-ReRoPE's k: a number >= 1, or "auto" (the paper's per-input k); else one line naming ``name``."""
    if leaky_k != "auto" and not (isinstance(leaky_k, (int, float)) and leaky_k >= 1):
        raise HarnessError(f"{name} must be a number >= 1 or 'auto', got {leaky_k!r}")
    return leaky_k


class ReRoPE(NearFarMethod):
    """ReRoPE: every distance of ``window`` or more is seen as ``window`` (optional log-n query scaling)."""

    name = "rerope"
    label = "ReRoPE"
    color = "#ff7f0e"
    marker = "^"
    order = 20
    # While decoding it keeps the near-rotated keys; its far rule uses the un-rotated keys.
    decode_key_copies = 1
    length_params = ("window",)  # Leaky-ReRoPE's k is a ratio
    leaky_k: float | str | None = None  # no leak: 1/k = 0 (Leaky-ReRoPE sets a k)

    def __init__(self, train_length: int, window: int = 512, logn: bool = True,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        self.window = check_window(window)
        self.logn = logn
        self.block_bytes = block_bytes

    def inverse_k(self, length: int) -> float:
        """1/k for a sequence of ``length`` tokens (0 for ReRoPE: every far distance maps to w)."""
        if self.leaky_k is None:
            return 0.0
        if self.leaky_k == "auto":
            # Farthest distance length-1 lands at T-1 ... kept <= 1 so short inputs are never stretched.
            return min(1.0, (self.train_length - self.window) / max(1, length - self.window))
        return 1.0 / float(self.leaky_k)

    def far_query_positions(self, query_index, length):
        """w + (t - w) / k: with the key at j / k, the pair is at w + (d - w) / k."""
        inv_k = self.inverse_k(length)
        return query_index * inv_k + self.window * (1 - inv_k)

    def far_key_positions(self, key_index, length):
        """j / k; ReRoPE's keys (1/k = 0) stay un-rotated."""
        inv_k = self.inverse_k(length)
        return (None, None) if inv_k == 0 else (key_index * inv_k, ("scaled", inv_k))


class LeakyReRoPE(ReRoPE):
    """Leaky-ReRoPE: distances beyond ``window`` grow by 1/``leaky_k`` per token instead of stopping;
    ``leaky_k: auto`` is the paper's per-input k (the farthest token lands at the training length)."""

    name = "leaky-rerope"
    label = "Leaky-ReRoPE"
    color = "#2ca02c"
    marker = "v"
    order = 30
    decode_key_copies = 2  # near- and far-rotated keys

    def __init__(self, train_length: int, window: int = 512, leaky_k: float | str = 16, logn: bool = True,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length, window=window, logn=logn, block_bytes=block_bytes)
        check_leaky_k(leaky_k)
        if leaky_k == "auto" and window >= train_length:
            raise HarnessError(f"leaky_k 'auto' needs window < train_length, got window={window}, "
                               f"train_length={train_length}")
        self.leaky_k = leaky_k

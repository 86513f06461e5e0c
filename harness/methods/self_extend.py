"""Self-Extend (Jin et al., "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning", ICML 2024).

Two position rules merged into one attention. For the query at true index t and a key j <= t:

  * neighbour attention, t - j < ``window``: ordinary RoPE, distance t - j;
  * grouped attention, t - j >= ``window``: the key at floor(j / G) and the query at
    floor(t / G) + window - floor(window / G), G = ``group_size``, so the grouped distance
    continues from the neighbour window instead of restarting at window / G.

Up to ``window`` tokens every pair is a neighbour and the method equals Origin. The largest
distance it shows the model is about L / G + window - window / G; choose G and the window so
that it stays below the training length (G = 8 and window = 1024 reach ~58k tokens on a model
trained at 8k, ~25k on one trained at 4k).

Stair PE (Mesa's paper variant, Eq. 3: d for d <= N, N + ceil((d - N) / E) beyond) is the same
rule as Self-Extend with window N and group size E whenever E divides N and the query's index t is
a multiple of E (the paper's appendix G; tests/methods/test_self_extend.py checks it on the two
implementations).

Where this follows the released code (datamllab/LongLM, ``self_extend_patch/Llama.py``) rather
than the paper text:
  * defaults ``group_size = 8``, ``window = 1024``, the code's defaults (the paper tunes both per model);
  * the query's shift is window - floor(window / G), as in the code's flash-attention path; its
    plain path writes window - window / G (a float), which differs only when G does not divide
    the window;
  * the code's optional log-n query scaling (``scale_base``, off by default) is not included.

The neighbour band and the grouped part are two attentions merged by their log-sum-exp, as for
ReRoPE (harness.methods.near_far): O(L * window) + one fused causal attention, no L x L tensor.

ALiBi models (MPT; harness.methods.alibi): the bias gets the same distances, t - j inside the
window and floor(t / G) + window - floor(window / G) - floor(j / G) beyond, every earlier key
visible. Inferred: the released code patches RoPE models only. Its grouped attention is defined
by positions (the difference of the query's and key's grouped positions), and ALiBi's bias
depends on that difference alone, so the same distances are fed to it.
"""

from __future__ import annotations

import torch

from harness.methods.attention import DEFAULT_BLOCK_BYTES
from harness.methods.near_far import NearFarMethod
from harness.validation import require_integer


class SelfExtend(NearFarMethod):
    """Neighbour attention inside ``window``; grouped positions floor(p / ``group_size``) beyond it."""

    name = "self-extend"
    label = "Self-Extend"
    color = "#17becf"
    marker = "h"
    order = 70
    decode_key_copies = 2  # keys rotated to their true and to their grouped positions
    length_params = ("window",)  # the group size is a ratio

    def __init__(self, train_length: int, group_size: int = 8, window: int = 1024,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        self.group_size = require_integer(group_size, f"{self.name} group_size")
        self.window = require_integer(window, f"{self.name} window")
        self.block_bytes = block_bytes

    def far_query_positions(self, query_index, length):
        """floor(t / G) + window - floor(window / G) for the queries at true indices ``query_index``."""
        g, w = self.group_size, self.window
        return torch.div(query_index, g, rounding_mode="floor") + (w - w // g)

    def far_key_positions(self, key_index, length):
        """floor(j / G); a key's grouped position never moves, so decoding rotates only the new key."""
        return torch.div(key_index, self.group_size, rounding_mode="floor"), ("grouped", self.group_size)

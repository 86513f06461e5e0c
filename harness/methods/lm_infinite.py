"""LM-Infinite (Han et al., "LM-Infinite: Zero-Shot Extreme Length Generalization for Large
Language Models", NAACL 2024).

A Lambda-shaped attention mask with a distance limit. For the query at true index t and a key j:

  * the local branch, t - j < ``n_local``: ordinary RoPE at the true distance t - j;
  * the global branch, j < ``n_global`` and t - j >= ``n_local``: the distance is capped at
    ``distance_limit``; with the limit no larger than the local window every such pair is at
    distance exactly ``distance_limit``, so the key stays un-rotated and the query is rotated to
    ``distance_limit`` (the released code's "stationary" query and key);
  * every other key is invisible.

Up to ``n_local`` tokens every pair is local and the method equals Origin.

Where this follows the released code (Glaciohound/LM-Infinite, ``models/llama.py`` and
``models/lambda_attention.py``) rather than the paper text:
  * ``n_global = 100``, as in the code's evaluation commands (its drop-in example uses 10; its
    README says 10-100 behave alike); ``n_local`` defaults to the training length and
    ``distance_limit`` to ``n_local``, as there (both L_pretrain).
  * The code rotates the global branch's query to ``min(limit, kv_len - 1)``, a constant for all
    queries; the paper writes min(d, limit) per pair. Both agree whenever the limit is at most the
    local window (every global pair then has d >= n_local >= limit), which is required here. A
    limit below the window caps only the global branch, as in the code; local pairs keep d.
  * The code caches un-rotated keys, as this class does, so cached decoding is exact.

Prefill cost is O(L * (n_global + n_local)): the attention is Lambda-shaped
(harness.methods.lambda_shaped).

On an ALiBi model (MPT) the Lambda mask is the bias's visibility and the global branch's
distance is min(d, ``distance_limit``) (= the limit: d >= n_local >= limit), local pairs at d:
the paper's rule, fed to the bias as the released code's MPT path (``models/mpt_7b.py``) does.
That code adds the stock ALiBi bias to the Lambda mask's local branch and, to its global branch,
a slice of the stock bias at the limit distance, laid out for its blocked kernel; its dense
fallback (no Lambda mask) caps the bias of every pair at least the limit apart instead, which
agrees with this when the limit equals n_local (the default). The code marks its path "not
validated for generation"; here cached decoding is exact, as on RoPE.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.methods.attention import DEFAULT_BLOCK_BYTES
from harness.methods.lambda_shaped import LambdaShapedMethod
from harness.validation import require_integer


class LMInfinite(LambdaShapedMethod):
    """Lambda-shaped attention: the first ``n_global`` tokens plus a local window, distances capped."""

    name = "lm-infinite"
    label = "LM-Infinite"
    color = "#8c564b"
    marker = "X"
    order = 60

    def __init__(self, train_length: int, n_global: int = 100, n_local: int | None = None,
                 distance_limit: int | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        self.n_global = require_integer(n_global, f"{self.name} n_global")
        self.n_local = require_integer(train_length if n_local is None else n_local, f"{self.name} n_local",
                                       nullable=True)
        self.distance_limit = require_integer(self.n_local if distance_limit is None else distance_limit,
                                              f"{self.name} distance_limit", nullable=True)
        if self.distance_limit > self.n_local:
            raise HarnessError(f"lm-infinite distance_limit ({self.distance_limit}) must not exceed n_local "
                               f"({self.n_local}): every global pair is at least n_local apart")
        self.block_bytes = block_bytes

    @property
    def band(self) -> int:
        return self.n_local

    @property
    def global_count(self) -> int:
        return self.n_global

    def global_distances(self, distance, query_index):
        """ALiBi: the distance capped at the limit."""
        return distance.clamp(max=self.distance_limit)

    def global_rule(self, query, query_index, key, true_key):
        """Un-rotated keys and the query rotated to the distance limit (the code's "stationary" pair)."""
        limit = torch.full_like(query_index, self.distance_limit)
        return self.rope(query, limit, "global-queries"), key

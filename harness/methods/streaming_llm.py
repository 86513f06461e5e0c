"""StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024).

Each token attends to the first ``sink`` tokens of the sequence (the attention sinks) and to the
``window`` most recent tokens, itself included; every token in between is dropped. Positions are
assigned inside that cache, as the released code (mit-han-lab/streaming-llm, ``pos_shift``) does:
the cache holds the sinks at positions 0..S-1 and the recent tokens at S..S+R-1, keys are cached
un-rotated and rotated to their cache slot at every step, and the query sits at the last slot. So
for the query at true index t (S = sink, R = window):

  * a recent key j (t - j < R) is at its true distance t - j;
  * a sink s with t - s >= R is at distance min(t, S + R - 1) - s: the query at slot S + R - 1
    once the cache is full, at its true position before;
  * every other key is invisible.

Up to S + R tokens nothing is dropped and the method equals Origin.

Where this follows the code rather than the paper text, and choices the paper leaves open:
  * The per-token rule above is what the released code computes when it feeds tokens one at a
    time (its perplexity evaluation). Its chat script prefills a whole prompt with full attention
    and only evicts between turns, which for a prompt longer than the cache is Origin past the
    training length; the harness applies the streaming rule to every token of a prefill, so a long
    prompt is read the way a stream would be.
  * ``window`` counts the query itself, as the code's ``recent_size`` does when it evicts before a
    step (``evict_for_space``); its token-by-token evaluation evicts after the step and so sees one
    key more.
  * Defaults: ``sink = 4`` (the paper and code); ``window: null`` = the training length minus the
    sinks, so the cache is exactly as long as the model's training context (the code's default
    2000 was chosen for 2k-4k models).
  * Cached decoding keeps exactly the sinks and the window visible, so it equals recomputing the
    whole sequence. The KV cache itself keeps every token (transformers' cache is not evicted): the
    compute per token is bounded, the memory is Origin's.

Prefill cost is O(L * (S + R)): the attention is Lambda-shaped (harness.methods.lambda_shaped).

On an ALiBi model (MPT) the same keys are visible and the bias gets the distance between cache
slots, min(t, S + R - 1) - s for a sink s outside the window and t - j for a recent key, which is
what the released code does on MPT: its ``enable_streaming_llm`` gives MPT only the evicting
cache (no position shift), and MPT's ALiBi, built over the cache's length, then measures distances
between slots, with the query at the last one.
"""

from __future__ import annotations

from harness.methods.attention import DEFAULT_BLOCK_BYTES
from harness.methods.lambda_shaped import LambdaShapedMethod
from harness.validation import require_integer


class StreamingLLM(LambdaShapedMethod):
    """Attention sinks plus a window of recent tokens, positions inside that cache."""

    name = "streaming-llm"
    label = "StreamingLLM"
    color = "#9467bd"
    marker = "P"
    order = 50

    def __init__(self, train_length: int, sink: int = 4, window: int | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(train_length)
        self.sink = require_integer(sink, f"{self.name} sink", minimum=0)
        self.window = require_integer(train_length - sink if window is None else window, f"{self.name} window",
                                      nullable=True)
        self.block_bytes = block_bytes

    @property
    def band(self) -> int:
        return self.window

    @property
    def global_count(self) -> int:
        return self.sink

    def global_distances(self, distance, query_index):
        """ALiBi: min(t, S + R - 1) - s, the query at its cache slot, each sink at its own."""
        return distance - (query_index - query_index.clamp(max=self.sink + self.window - 1))[:, None]

    def global_rule(self, query, query_index, key, true_key):
        """Sinks keep their true positions (0..S-1); the query moves to its cache slot."""
        slot = query_index.clamp(max=self.sink + self.window - 1)
        return self.rope(query, slot, "sink-queries"), true_key

"""Origin: the model's unchanged positions, i.e. the stock transformers model.

On a RoPE model Origin changes nothing. On an ALiBi model (MPT) it is plain ALiBi extrapolation:
distance W = t - j to every earlier key, at any length, as MPT does with ``max_seq_len`` raised
at run time; the stock model would fail past ``max_seq_len`` (harness.methods.alibi).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.methods.alibi import attach_alibi, eager_alibi_attention_bytes, is_alibi
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
        """Nothing to change: the stock model is Origin. An ALiBi model gets its stock bias at any length."""
        if is_alibi(model):
            attach_alibi(model, self)

    def alibi_distances(self, query_index, key_count):
        """W = t - j, every earlier key visible: the stock bias's (1, K) row K - 1 - j, which
        differs from t - j by K - 1 - t, a constant per query; the model's causal mask hides j > t.
        Bit-identical to the stock bias up to max_seq_len, and defined beyond it."""
        return (key_count - 1 - torch.arange(key_count, device=query_index.device))[None].float(), None

    def alibi_prefill_attention_bytes(self, shape, length, dtype_bytes):
        """MPT's eager attention with the stock bias, (H, 1, L)."""
        return eager_alibi_attention_bytes(shape.heads, length, dtype_bytes, bias_rows=1)

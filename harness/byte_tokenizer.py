"""A dependency-free UTF-8 byte tokenizer for random-weight models (ids 0..255).

Random models have no trained tokenizer, but the tasks still need to turn text into ids and
back; bytes are the simplest exact, reversible mapping. Only the methods tasks use exist.
"""

from __future__ import annotations


class ByteTokenizer:
    vocab_size = 256
    eos_token_id = 0  # NUL never occurs in task text
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eos_token_id]
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

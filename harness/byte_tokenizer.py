"""A dependency-free UTF-8 byte tokenizer for random-weight models (ids 0..255).

Random models have no trained tokenizer, but the tasks still need to turn text into ids and
back; bytes are the simplest exact, reversible mapping. Only the methods tasks use exist; a library
that needs transformers' whole tokenizer API gets the same mapping from :meth:`to_transformers`.
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

    def to_transformers(self):
        """The same tokenizer as a transformers ``PreTrainedTokenizerFast`` (ids = UTF-8 bytes, EOS and
        padding = NUL), for libraries that need transformers' tokenizer API (e.g. lm-evaluation-harness)."""
        from tokenizers import Tokenizer, decoders, models
        from tokenizers.pre_tokenizers import ByteLevel
        from transformers import PreTrainedTokenizerFast

        # ByteLevel spells each byte as one printable character (GPT-2's table); a BPE without merges
        # over those 256 characters, with id = byte value, then encodes text to its UTF-8 bytes.
        chars = _byte_chars()
        backend = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
        backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        eos = chars[self.eos_token_id]
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos)


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}

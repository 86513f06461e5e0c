"""Passkey retrieval (paper Figure 3): find a 1..10^7 number hidden at a depth in filler.

A sample is a pure function of (tokenizer, template, length, seed, index): the same inputs give
the same tokens for every method. ``length`` counts the model's tokens of the whole prompt; the
filler is cut so the prompt is as long as possible without exceeding it.

The depth is random per sample (the paper's protocol), or, with ``depths`` (fractions of the
filler, e.g. [0, 0.25, 0.5, 0.75, 1]), sample i sits at ``depths[i % len(depths)]`` with the same
key as the random-depth sample i: set ``samples`` to a multiple of the number of depths. The
depth figure maps accuracy by depth and length per method, in five depth bins, for either kind.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from harness.errors import HarnessError
from tasks.base import Figure, Task, TaskInput, check_integer, greedy_generate
from tasks.prompts import format_prompt

TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"


@dataclass(frozen=True)
class PasskeySample:
    input_ids: list[int]
    key: int
    depth: float  # where the needle sits, 0 = start of the filler, 1 = end
    length: int  # tokens in input_ids (<= the requested length)


def _rng(seed: int, length: int, index: int) -> random.Random:
    # A string seed is hashed deterministically by random.Random (unlike hash(), which is salted).
    return random.Random(f"passkey/{seed}/{length}/{index}")


def _prompt(tokenizer, template: str, n_filler: int, slot: int, key: int) -> list[int]:
    parts = [FILLER] * n_filler
    parts.insert(slot, NEEDLE.format(key=key))
    text = TASK_DESCRIPTION + " " + " ".join(parts)
    prompt = format_prompt(template, tokenizer, text, QUESTION, ANSWER_PREFIX)
    return tokenizer.encode(prompt, add_special_tokens=template != "chat")


def make_sample(tokenizer, template: str, length: int, seed: int, index: int,
                depth: float | None = None) -> PasskeySample:
    """The index-th passkey prompt of at most ``length`` tokens, the needle at ``depth`` (a
    fraction of the filler; None: random)."""
    rng = _rng(seed, length, index)
    key = rng.randint(1, 10**7)
    depth_fraction = rng.random() if depth is None else depth

    def build(n: int) -> list[int]:
        return _prompt(tokenizer, template, n, round(depth_fraction * n), key)

    # Tokens grow ~linearly with the filler count: estimate, then step down until it fits.
    base, per = len(build(0)), len(build(8)) - len(build(0))
    if base >= length:
        raise ValueError(f"passkey length {length} is shorter than the prompt without filler ({base} tokens)")
    n = max(0, (length - base) // max(1, per) * 8 + 8)
    ids = build(n)
    while len(ids) > length and n > 0:
        n = max(0, n - max(1, (len(ids) - length) * 8 // max(1, per)))
        ids = build(n)
    while n > 0 and len(ids) < length and len(longer := build(n + 1)) <= length:
        n, ids = n + 1, longer
    return PasskeySample(ids, key, round(depth_fraction * n) / max(1, n), len(ids))


def score(answer: str, key: int) -> bool:
    """Correct iff the first integer in the answer equals the key (the paper's metric)."""
    match = re.search(r"\d+", answer)
    return match is not None and int(match.group()) == key


class PasskeyTask(Task):
    """Runner adapter: ``score`` is 1.0 when the first integer of the greedy answer is the key."""

    name = "passkey"
    metric = "accuracy"
    score_kind = "binary"
    columns = {"key": int, "depth": float, "answer": str}
    figures = (Figure("passkey_accuracy", "accuracy", "Passkey retrieval", "accuracy (95% Wilson interval)",
                      "Passkey retrieval accuracy vs input length (paper Figure 3), log2 length axis; error bars = 95% "
                      "Wilson intervals; n above the panel = samples per method and length; dashed line = the model's "
                      "training length; x = a length where every sample failed (OOM/ERR)."),
               Figure("passkey_depth", "depth_map", "Passkey retrieval by depth",
                      "needle depth (fraction of the filler)",
                      "Passkey accuracy by needle depth (rows, five bins from the start of the filler to its end) and "
                      "input length (columns), one panel per method; each cell shows retrieved/samples, its colour the "
                      "accuracy (colour bar); grey = no rows at that depth and length."))
    # Options added after the first committed rows, at the value that reproduces those rows: left
    # out of the results hash so those rows' files stay resumable.
    hash_neutral_defaults = {"depths": None}

    @classmethod
    def check_params(cls, params: dict) -> None:
        check_integer(params, "max_new_tokens")  # the answer is generated: at least one token

    def __init__(self, *args, max_new_tokens: int = 8, depths: list[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_params(dict(max_new_tokens=max_new_tokens))
        self.max_new_tokens = int(max_new_tokens)
        if depths is not None:
            depths = [depths] if isinstance(depths, (int, float)) else list(depths)
            if not depths or not all(isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= 1
                                     for d in depths):
                raise HarnessError(f"task.depths must be null or a list of fractions in [0, 1], got {depths!r}")
        self.depths = depths

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        return int(params["max_new_tokens"])

    def build_input(self, length: int, index: int) -> TaskInput:
        depth = None if self.depths is None else float(self.depths[index % len(self.depths)])
        sample = make_sample(self.tokenizer, self.prompt_template, length, self.seed, index, depth)
        return TaskInput(sample.input_ids, {"key": sample.key, "depth": round(sample.depth, 4)})

    def evaluate(self, model, task_input: TaskInput) -> dict:
        new = greedy_generate(model, task_input.input_ids, self.max_new_tokens, self.tokenizer.eos_token_id)
        answer = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return {"score": float(score(answer, task_input.info["key"])), "answer": answer}

"""What a task is, for the runner.

A task is built from its Hydra config (``conf/task/<name>.yaml`` names the class in ``_target_``)
plus the loaded model's tokenizer and prompt template, and then answers two questions:

* ``build_input(length, index)`` -> :class:`TaskInput`: the index-th input of a given length. It
  never touches the model and is a pure function of (task config, tokenizer, length, seed, index),
  so every method sees exactly the same tokens (the runner stores a hash of them in each row).
* ``evaluate(model, task_input)`` -> dict: run the (method-applied) model on that input and return
  at least ``score`` (a float; the task's ``metric``), plus any task-specific columns.

Adding a task is one module with one such class, plus one config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TaskInput:
    input_ids: list[int]
    info: dict[str, Any] = field(default_factory=dict)  # columns for the row (e.g. the passkey and its depth)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


class Task:
    name = "task"
    metric = "score"  # what ``score`` means, written to each row (e.g. "accuracy", "nll")
    columns: tuple[str, ...] = ()  # the task's own row columns: keys of TaskInput.info and of evaluate()'s dict
    needs_tokenizer = True

    def __init__(self, lengths, samples: int, tokenizer=None, prompt_template: str = "raw", seed: int = 0,
                 train_length: int | None = None, vocab_size: int | None = None, **params):
        self.lengths = [int(x) for x in lengths]
        self.samples = int(samples)
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.seed = int(seed)
        self.train_length = train_length
        self.vocab_size = vocab_size
        if params:
            raise ValueError(f"unknown parameter(s) for task {self.name!r}: {', '.join(sorted(params))}")

    def build_input(self, length: int, index: int) -> TaskInput:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, task_input: TaskInput) -> dict[str, Any]:
        raise NotImplementedError


def greedy_generate(model: torch.nn.Module, input_ids: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """Greedy decoding of up to ``max_new_tokens``; returns only the new token ids."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=eos_token_id, eos_token_id=eos_token_id)
    return out[0, ids.shape[1]:].tolist()

"""Hidden-state values against position (the paper's Figure 2, 13 and 14): the theory made visible.

The paper's argument: a hidden-state value at a given dimension, on an input of one repeated word
("hello" x 16000 on LLaMA2-7B-Chat), stays in a band inside the training length; its value at
the training length T is a threshold, and where a method's curve crosses it, extrapolation is
predicted to fail. This task records those curves for any model and method:

* the input of ``length`` tokens is ``text`` repeated (tokenized once, the ids tiled, so every
  method sees the same tokens), BOS first when the tokenizer adds one;
* one forward pass; forward hooks keep only the outputs of ``layers`` (decoder layer indices,
  negative from the end) at ``positions`` evenly spaced positions plus T - 1, so nothing of size
  L x hidden is kept beyond what the model itself holds;
* dimensions: ``dims`` if given, else the ``top_dims`` dimensions of largest |value| at position
  T - 1 of each layer, in this forward (the same for every method that equals Origin inside T);
* one row per (layer, dimension, position): ``score`` is the value; ``threshold`` is the same
  dimension's value at T - 1; ``sample`` numbers the rows of a length.

The figure draws value against position per method, the training length as a vertical line, the
threshold as a horizontal one, and marks the first crossing (:func:`first_crossing`): the first
position past T - 1 where the value is beyond the threshold on the side away from the curve's mean
inside T (the paper's "exceeds the threshold", for curves that rise or fall towards it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.methods.method import decoder_of
from harness.results import input_hash
from tasks.base import Figure, Task


class HiddenStateTask(Task):
    name = "hidden"
    metric = "hidden_value"
    whole_length = True  # one forward gives every row of a length
    heatmap = False  # rows are curves, not one score per input
    columns = {"layer": int, "dim": int, "position": int, "threshold": float, "train_length": int}
    figures = (Figure("hidden_states", "hidden_curve", "Hidden state vs position", "hidden-state value",
                      "Hidden-state values at chosen dimensions vs position on a repeated word (paper Figure 2): one "
                      "panel per (model, layer, dimension), one line per method; dashed vertical line = training "
                      "length; dotted horizontal line = the value at the training length (the threshold); x = the "
                      "first position past it where a method's curve crosses the threshold."),)

    @classmethod
    def tables(cls, frame) -> dict[str, Any]:
        """``hidden_prediction``: per model, method, layer and dimension, the predicted failure
        position (the curve's first crossing past T, on the method's longest input) beside the
        observed one: the first length with accuracy below 0.5 in the rows of the model and method
        of a 0/1-scored task whose lengths are tokens (passkey)."""
        import pandas as pd

        from tasks import TASKS

        hidden = frame[(frame["task"] == cls.name) & (frame["status"] == "ok")]
        observed_tasks = [name for name, task in TASKS.items() if task.score_kind == "binary" and task.length_unit == "tokens"]
        observed = frame[frame["task"].isin(observed_tasks) & (frame["status"] == "ok")]
        out = []
        for (model, method, layer, dim), cell in hidden.groupby(["model", "method", "layer", "dim"]):
            cell = cell[cell["length"] == cell["length"].max()].sort_values("position")
            predicted = first_crossing(cell["position"], cell["score"], cell["threshold"].iloc[0],
                                       int(cell["train_length"].iloc[0]))
            accuracy = observed[(observed["model"] == model) & (observed["method"] == method)].groupby("length")["score"].mean()
            failing = accuracy[accuracy < 0.5]
            out.append(dict(model=model, method=method, layer=int(layer), dim=int(dim),
                            longest_input=int(cell["length"].max()), predicted_failure=predicted,
                            observed_failure=int(failing.index.min()) if len(failing) else None))
        columns = ["model", "method", "layer", "dim", "longest_input", "predicted_failure", "observed_failure"]
        return {"hidden_prediction": pd.DataFrame(out, columns=columns)} if out else {}

    @classmethod
    def samples_per_length(cls, params: dict) -> int:
        """One input (one forward) per length; it writes many rows (plan_notes says how many)."""
        return 1

    @classmethod
    def plan_notes(cls, params: dict) -> list[str]:
        layers, dims = params.get("layers") or [], params.get("dims")
        per_layer = len(dims) if dims else int(params.get("top_dims", 0))
        return [f"one forward per length, without a KV cache; {len(layers) * per_layer * (int(params['positions']) + 1)} "
                "rows per length at most (layers x dimensions x positions)"]

    def __init__(self, *args, text: str = "hello", layers: list[int] = (-1,), dims: list[int] | None = None,
                 top_dims: int = 2, positions: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        self.text = str(text)
        self.layers = [int(layer) for layer in ([layers] if isinstance(layers, int) else layers)]
        self.dims = None if dims is None else [int(d) for d in ([dims] if isinstance(dims, int) else dims)]
        self.top_dims = int(top_dims)
        self.positions = int(positions)
        if not self.text.strip():
            raise HarnessError("task.text must be a non-empty word or phrase to repeat")
        if not self.layers or (self.dims is None and self.top_dims <= 0) or self.positions < 2:
            raise HarnessError("task.hidden needs layers (a list), dims or top_dims > 0, and positions >= 2")

    def input_ids(self, length: int) -> list[int]:
        """``text`` repeated to exactly ``length`` tokens (the tokenizer's BOS first, if it adds one)."""
        word = self.tokenizer.encode(" " + self.text.strip(), add_special_tokens=False)
        start = self.tokenizer.encode("", add_special_tokens=True)[:1]  # BOS where the tokenizer adds it
        repeats = -(-(length - len(start)) // len(word))
        return (start + word * repeats)[:length]

    def sampled_positions(self, length: int) -> list[int]:
        """``positions`` evenly spaced positions of ``length``, plus T - 1 (the threshold's)."""
        chosen = set(np.linspace(0, length - 1, self.positions).round().astype(int).tolist())
        if self.train_length and self.train_length <= length:
            chosen.add(self.train_length - 1)
        return sorted(chosen)

    def evaluate_length(self, model: torch.nn.Module, length: int) -> list[dict[str, Any]]:
        ids = self.input_ids(length)
        positions = self.sampled_positions(length)
        layers = decoder_of(model).layers
        chosen = [index % len(layers) for index in self.layers]
        device = next(model.parameters()).device
        where = torch.tensor(positions, device=device)
        captured: dict[int, torch.Tensor] = {}

        def keep(index: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden[0, where].float().cpu()  # (positions, hidden)
            return hook

        handles = [layers[i].register_forward_hook(keep(i)) for i in chosen]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([ids], device=device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        anchor = positions.index(self.train_length - 1) if (self.train_length or 0) - 1 in positions else len(positions) - 1
        digest = input_hash(ids)
        rows = []
        for layer in chosen:
            values = captured[layer]
            dims = self.dims or values[anchor].abs().topk(self.top_dims).indices.sort().values.tolist()
            for dim in dims:
                for i, position in enumerate(positions):
                    rows.append(dict(sample=len(rows), score=float(values[i, dim]), tokens=length, input_hash=digest,
                                     layer=layer, dim=int(dim), position=position,
                                     threshold=float(values[anchor, dim]), train_length=self.train_length))
        return rows


def first_crossing(positions, values, threshold: float, train_length: int) -> int | None:
    """The first position >= T where ``values`` lie beyond ``threshold`` on the side away from
    their mean over positions < T - 1 (None: no crossing, or no position on either side of T)."""
    positions, values = np.asarray(positions), np.asarray(values, dtype=float)
    inside = values[positions < train_length - 1]
    if inside.size == 0:
        return None
    side = np.sign(threshold - inside.mean()) or 1.0
    beyond = (positions >= train_length) & (side * (values - threshold) > 0)
    return int(positions[beyond][0]) if beyond.any() else None

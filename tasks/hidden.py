"""Hidden-state values against position (the paper's Figure 2, 13 and 14): the theory made visible.

The paper's argument: a hidden-state value at a given dimension, on an input of one repeated word
("hello" x 16000 on LLaMA2-7B-Chat), stays in a band inside the training length; its value at
the training length T is a threshold, and where a method's curve crosses it, extrapolation is
predicted to fail. This task records those curves for any model and method:

* the input of ``length`` tokens is ``text`` repeated, after a distinct first token: the
  tokenizer's BOS when it has one (LLaMA's ``<s>``, as in the paper; SmolLM2's ``<|im_start|>``),
  and the text's first occurrence as it tokenizes at the start of a text. Why: with one token at
  every position, every position of every layer holds the same hidden state under any RoPE method
  (attention averages identical values), so the curves would be flat; the distinct first token is
  what position is measured from;
* one forward pass; forward hooks keep only the outputs of ``layers`` (decoder layer indices,
  negative from the end) at ``positions`` evenly spaced positions plus T - 1, so nothing of size
  L x hidden is kept beyond what the model itself holds;
* dimensions: ``dims`` if given (a list for every layer, or a mapping layer -> list), else the
  ``top_dims`` dimensions of each layer whose value follows position most closely inside the
  training length (largest |Spearman correlation| with position over the recorded positions < T,
  in this forward). On a repeated word position is the only thing that changes along the input, so
  these are the dimensions that carry it, and for a curve that moves steadily with position the
  value at T is the edge of what training showed: the threshold argument. The largest |values| are
  a few "massive activation" dimensions that swing by thousands along the input (SmolLM2, layer 29
  dimension 507: -4220 to 4695). To compare methods on the same dimensions, fix ``dims`` (the
  SmolLM2 preset does, with Origin's choice);
* one row per (layer, dimension, position): ``score`` is the value; ``threshold`` is the same
  dimension's value at T - 1; ``sample`` numbers the rows of a length.

The figure draws value against position per method, the training length as a vertical line, the
threshold as a horizontal one, and marks the first crossing: the first position past T - 1 where
the value is beyond the threshold on the side away from the curve's mean inside T (the paper's
"exceeds the threshold", for curves that rise or fall towards it), by more than the curve's own
noise (three median steps between recorded positions inside T). The threshold is the model's own
value at T - 1, i.e. Origin's where Origin's rows exist (one line per panel, as in the paper); a
method without them uses its own. Thresholds and crossings are harness.analysis's, which the
figure (plots.figures) and this task's table (:meth:`HiddenStateTask.tables`) share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from harness.analysis import hidden_prediction
from harness.architectures import architecture_of
from harness.errors import HarnessError
from harness.identity import input_hash
from tasks.base import TASKS, Figure, Task, check_layers


class HiddenStateTask(Task):
    name = "hidden"
    metric = "hidden_value"
    whole_length = True  # one forward gives every row of a length
    heatmap = False  # rows are curves, not one score per input
    columns = {"layer": int, "dim": int, "position": int, "threshold": float, "train_length": int}
    figures = (Figure("hidden_states", "hidden_curve", "Hidden state vs position", "hidden-state value",
                      "Hidden-state values at chosen dimensions vs position on a repeated word after BOS (paper "
                      "Figure 2): one panel per (model, layer, dimension), one line per method; dashed vertical line = "
                      "training length; dotted horizontal line = Origin's value there (the threshold); x = the first "
                      "position past it where a method's curve is beyond the threshold by more than its own noise. "
                      "The y axis spans the values from T/16 on: the first positions after BOS are off-scale."),)

    @classmethod
    def tables(cls, frame) -> dict[str, Any]:
        """``hidden_prediction`` (harness.analysis.hidden_prediction): per model, method, layer and
        dimension, the predicted failure position beside the observed one, observed in the rows of
        the 0/1-scored tasks whose lengths are tokens (passkey)."""
        observed_tasks = [name for name, task in TASKS.items()
                          if task.score_kind == "binary" and task.length_unit == "tokens"]
        ok = frame[frame["status"] == "ok"]
        table = hidden_prediction(ok[ok["task"] == cls.name], ok[ok["task"].isin(observed_tasks)])
        return {"hidden_prediction": table} if len(table) else {}

    @classmethod
    def samples_per_length(cls, params: dict) -> int:
        """One input (one forward) per length; it writes many rows (plan_notes says how many)."""
        return 1

    @classmethod
    def plan_notes(cls, params: dict) -> list[str]:
        layers, dims = params.get("layers") or [], params.get("dims")
        if isinstance(dims, Mapping):
            curves = sum(len(d) for d in dims.values())
        else:
            curves = len(layers) * (len(dims) if dims else int(params.get("top_dims", 0)))
        return [f"one forward per length, without a KV cache; {curves * (int(params['positions']) + 1)} "
                "rows per length at most (layers x dimensions x positions)"]

    def __init__(self, *args, text: str = "hello", layers: list[int] = (-1,),
                 dims: list[int] | Mapping[int, list[int]] | None = None, top_dims: int = 2, positions: int = 64,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.text = str(text)
        if isinstance(dims, Mapping):  # layer -> its dimensions; the mapping names the layers
            self.dims = {int(layer): _int_list(chosen) for layer, chosen in dims.items()}
            layers = list(self.dims)
        else:
            self.dims = None if dims is None else _int_list(dims)
        self.layers = _int_list(layers)
        self.top_dims = int(top_dims)
        self.positions = int(positions)
        if not self.text.strip():
            raise HarnessError("task.text must be a non-empty word or phrase to repeat")
        if not self.layers or (self.dims is None and self.top_dims <= 0) or self.positions < 2:
            raise HarnessError("task.hidden needs layers (a list), dims or top_dims > 0, and positions >= 2")

    def input_ids(self, length: int) -> list[int]:
        """``text`` repeated to exactly ``length`` tokens, after a distinct first token (see the
        module docstring): the tokenizer's BOS if it has one, then the text as it starts a text,
        then `` text`` repeated."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        first = self.tokenizer.encode(self.text.strip(), add_special_tokens=False)
        word = self.tokenizer.encode(" " + self.text.strip(), add_special_tokens=False)
        start = ([bos] if bos is not None else []) + first
        ids = (start + word * -(-length // len(word)))[:length]
        if len(set(ids)) < 2:
            raise HarnessError(f"task.text {self.text!r} gives one token repeated and the tokenizer has no BOS: every "
                               "position would hold the same hidden state; use a text of two or more tokens")
        return ids

    def sampled_positions(self, length: int) -> list[int]:
        """``positions`` evenly spaced positions of ``length``, plus T - 1 (the threshold's)."""
        chosen = set(np.linspace(0, length - 1, self.positions).round().astype(int).tolist())
        if self.train_length and self.train_length <= length:
            chosen.add(self.train_length - 1)
        return sorted(chosen)

    def check_model(self, model: torch.nn.Module) -> None:
        check_layers(model, self.layers)

    def evaluate_length(self, model: torch.nn.Module, length: int) -> list[dict[str, Any]]:
        self.check_model(model)  # an index past the last layer must not wrap around to another layer
        ids = self.input_ids(length)
        positions = self.sampled_positions(length)
        layers = architecture_of(model).layers_of(model)
        chosen = [index % len(layers) for index in self.layers]  # in range: only negative ones move
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
        anchor = (positions.index(self.train_length - 1) if (self.train_length or 0) - 1 in positions
                  else len(positions) - 1)
        digest = input_hash(ids)
        rows = []
        for index, layer in zip(self.layers, chosen):
            values = captured[layer]
            if isinstance(self.dims, dict):
                dims = self.dims[index]
            else:
                dims = self.dims or position_tracking_dims(values, positions, self.train_length, self.top_dims)
            for dim in dims:
                for i, position in enumerate(positions):
                    rows.append(dict(sample=len(rows), score=float(values[i, dim]), tokens=length, input_hash=digest,
                                     layer=layer, dim=int(dim), position=position,
                                     threshold=float(values[anchor, dim]), train_length=self.train_length))
        return rows


def position_tracking_dims(values: torch.Tensor, positions: list[int], train_length: int | None,
                           count: int) -> list[int]:
    """The ``count`` dimensions whose value follows position most closely inside the training
    length: the largest |Spearman correlation| between value and position over the recorded
    positions < T (all of them when T is unknown or beyond the input), in ascending order.

    ``values``: (len(positions), hidden), one row per recorded position (ascending)."""
    inside = [i for i, position in enumerate(positions) if not train_length or position < train_length]
    ranks = rankdata(values[inside].double().numpy(), axis=0)  # (P, hidden); ties share their mean rank
    order = np.arange(len(inside), dtype=float)[:, None]  # positions are ascending: their own ranks
    ranks, order = ranks - ranks.mean(0), order - order.mean()
    correlation = (ranks * order).sum(0) / np.maximum(np.linalg.norm(ranks, axis=0) * np.linalg.norm(order), 1e-12)
    return sorted(np.argsort(-np.abs(correlation), kind="stable")[:count].tolist())


def _int_list(value) -> list[int]:
    return [int(v) for v in ([value] if isinstance(value, int) else value)]

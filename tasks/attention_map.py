"""Attention maps (the paper's Figures 11-12 and 15-16): which keys each query attends to, per method.

The input of ``length`` tokens is the passkey task's prompt (tasks.passkey.make_sample, its
sample 0 of that length: the same tokens passkey's sample 0 sees), so the map is drawn on a
realistic prompt. One forward per length, without a KV cache; for each of ``layers`` (decoder
indices, negative from the end) the attention weights are pooled to a ``grid`` x ``grid`` map of
(query bin, key bin). Bins are equal-width over token positions: token j of an input of L tokens
is in bin floor(j * grid / L); rows give each bin's first token (``query_start``, ``key_start``).
A cell is the mean, over the queries of its query bin, of each query's total weight on the keys of
its key bin, so each query bin's cells sum to 1 over key bins. ``heads: null`` averages the query
heads (``head`` = -1 in rows), a list keeps those heads apart.

How, without ever building L x L (fused kernels, chunked methods, 16k+ tokens): the weights are
read through the method's own attention code. For the forward, the model's attention
implementation (``config._attn_implementation``: transformers' sdpa or eager for rotary-only
methods such as Origin, Dynamic-NTK and YaRN; ``harness_weave`` for the weave methods) is wrapped
by a probe implementation registered with transformers' ``AttentionInterface`` (and, for masks,
``AttentionMaskInterface``, with the wrapped implementation's own mask function), then restored.
The probe calls the wrapped function as the model would and, on the chosen layers, calls it again
with the values replaced by one-hot bin indicators, V'[b, h, j, :] = e_bin(j) (same shape as V:
(batch, kv_heads, keys, head_dim)). Output row i is then sum_j w_ij e_bin(j): query i's attention
mass per key bin, computed by the method's own code path (its chunks, Stair PE, ReRoPE's two
rules, fused kernels). A grid wider than head_dim takes ceil(grid / head_dim) such calls, each
covering head_dim bins. Memory is that of one more attention output, O(L x heads x head_dim).
Query rows are averaged within their query bins.

Rows: one per (layer, head, query_bin, key_bin) with ``key_bin <= query_bin``: a key bin after
the query bin holds only keys after every one of its queries, which causal attention never sees
(weight exactly 0), so those rows are not written (the figure leaves them blank). ``score`` is the
pooled weight. In fp16/bf16 the pooled weights carry that dtype's rounding (the one-hot values are
exact, the attention output is rounded once).

Not every model routes attention through the interface: MPT (ALiBi) does not, and is refused in
one line. ``tests/tasks/test_attention_map.py`` checks the maps against ``output_attentions``
(eager), sdpa, Mesa's chunk plan and a naive ReRoPE.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from harness.architectures import architecture_of
from harness.errors import HarnessError
from harness.identity import input_hash
from harness.validation import require_integer
from tasks.base import Figure, Task, check_integer, check_layers
from tasks.passkey import make_sample

PROBE_PREFIX = "harness_probe_"  # + the wrapped implementation's name: one registered probe per implementation
PROBE_ATTRIBUTE = "harness_attention_probe"  # set on the chosen layers' attention modules during the forward
ALL_HEADS = -1  # the ``head`` of a row that is the mean over every query head


def bins_of(count: int, grid: int, device=None) -> torch.Tensor:
    """The bin (count,) of each of ``count`` token positions: floor(j * grid / count)."""
    return torch.div(torch.arange(count, device=device) * grid, count, rounding_mode="floor")


def bin_starts(count: int, grid: int) -> list[int]:
    """The first token position of each of ``grid`` bins over ``count`` positions: ceil(b * count / grid)."""
    return [-(-b * count // grid) for b in range(grid)]


class BinProbe:
    """What the probe records on one attention module: the (grid, heads, grid) map of its call."""

    def __init__(self, grid: int):
        self.grid = grid
        self.map: torch.Tensor | None = None

    def record(self, attend, query: torch.Tensor, value: torch.Tensor) -> None:
        """``attend(values)`` runs the layer's attention function on its own queries and keys with
        other values and returns its output (batch, queries, heads, head_dim)."""
        batch, kv_heads, keys, width = value.shape
        queries, heads = query.shape[2], query.shape[1]
        if batch != 1:
            raise HarnessError("the attention probe reads one sequence at a time (batch 1)")
        key_bins = bins_of(keys, self.grid, value.device)
        query_bins = key_bins[keys - queries:]  # the queries are the last ``queries`` keys
        pooled = torch.zeros(self.grid, heads, self.grid, dtype=torch.float32, device=value.device)
        for first in range(0, self.grid, width):  # head_dim bins per call
            columns = min(width, self.grid - first)
            one_hot = (key_bins[:, None] - first == torch.arange(width, device=value.device)).to(value.dtype)
            output = attend(one_hot.expand(batch, kv_heads, keys, width).contiguous())
            pooled[:, :, first : first + columns] = torch.zeros(
                self.grid, heads, columns, dtype=torch.float32, device=value.device).index_add_(
                0, query_bins, output[0, :, :, :columns].float())
        counts = torch.bincount(query_bins, minlength=self.grid).clamp(min=1).to(pooled.dtype)
        self.map = (pooled / counts[:, None, None]).cpu()


def _inner_function(module: torch.nn.Module, inner: str):
    """The attention function ``module`` calls for implementation ``inner``: the lookup its own
    forward does (eager is its modeling file's ``eager_attention_forward``, not in the interface)."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if inner == "eager" and eager is None:
        raise HarnessError(f"{type(module).__name__}: no eager_attention_forward in its modeling file to probe")
    return ALL_ATTENTION_FUNCTIONS.get_interface(inner, eager)


def _probe_attention(module, query, key, value, attention_mask, *args, inner: str, **kwargs):
    """The probe implementation: the wrapped implementation's output, unchanged; on a module with a
    :class:`BinProbe`, also its call with one-hot values (module docstring)."""
    function = _inner_function(module, inner)
    output = function(module, query, key, value, attention_mask, *args, **kwargs)
    probe = getattr(module, PROBE_ATTRIBUTE, None)
    if probe is not None:
        probe.record(lambda values: function(module, query, key, values, attention_mask, *args, **kwargs)[0],
                     query, value)
    return output


def probe_name(inner: str) -> str:
    """The probe implementation wrapping ``inner``, registered on first use."""
    name = PROBE_PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        AttentionInterface.register(name, functools.partial(_probe_attention, inner=inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def probe_support(model: torch.nn.Module) -> str | None:
    """Why ``model``'s attention cannot be probed (one line), or None."""
    inner = model.config._attn_implementation
    if not model._can_set_attn_implementation():
        return (f"model type {model.config.model_type!r} does not route attention through transformers' "
                "AttentionInterface, which the attention probe wraps")
    if inner not in ALL_MASK_ATTENTION_FUNCTIONS:
        return f"attention implementation {inner!r} has no mask function the probe can reuse"
    return None


def attention_maps(model: torch.nn.Module, input_ids: list[int], layers: list[int],
                   grid: int) -> dict[int, torch.Tensor]:
    """{layer: the (grid, heads, grid) map} of one forward over ``input_ids`` (module docstring).
    ``layers`` are decoder indices in range (0..n-1)."""
    why = probe_support(model)
    if why is not None:
        raise HarnessError(why)
    modules = architecture_of(model).attention_modules(model)
    probes = {layer: BinProbe(grid) for layer in layers}
    inner = model.config._attn_implementation
    device = next(model.parameters()).device
    for layer, probe in probes.items():
        setattr(modules[layer], PROBE_ATTRIBUTE, probe)
    model.set_attn_implementation(probe_name(inner))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([input_ids], device=device), use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation(inner)
        for layer in probes:
            delattr(modules[layer], PROBE_ATTRIBUTE)
    missing = [layer for layer, probe in probes.items() if probe.map is None]
    if missing:
        raise HarnessError(f"layers {missing}: their attention was not called through the probe")
    return {layer: probe.map for layer, probe in probes.items()}


class AttentionMapTask(Task):
    name = "attention-map"
    metric = "attention_weight"
    whole_length = True  # one forward gives every row of a length
    heatmap = False  # rows are maps, not one score per input
    columns = {"layer": int, "head": int, "query_bin": int, "key_bin": int, "query_start": int, "key_start": int,
               "train_length": int}
    figures = (Figure("attention_map", "attention_map", "Attention map", "query position (tokens)",
                      "Attention maps on the passkey prompt (paper Figures 11-12, 15-16): one panel per method, for "
                      "each model, length, layer and head (or the mean over heads). Each cell is the attention "
                      "weight a query bin puts on a key bin: the mean over the bin's queries of each query's total "
                      "weight on the key bin's keys (grid x grid equal-width bins over token positions; each row "
                      "sums to 1). One log colour scale, 1e-4 (and less) to 1, in every panel; blank = keys after the "
                      "queries (causal). Dashed lines = the training length on both axes."),)

    @classmethod
    def check_params(cls, params: dict) -> None:
        check_integer(params, "grid", minimum=2)
        layers = params.get("layers")
        if layers is not None:
            if not isinstance(layers, (list, tuple)) or not layers:
                raise HarnessError(f"task.layers must be a non-empty list of decoder layer indices, got {layers!r}")
            for layer in layers:
                require_integer(layer, "task.layers", minimum=None)
        heads = params.get("heads")
        if heads is not None:
            if not isinstance(heads, (list, tuple)) or not heads:
                raise HarnessError(f"task.heads must be null (the mean over heads) or a non-empty list, got {heads!r}")
            for head in heads:
                require_integer(head, "task.heads", minimum=0)
        grid, lengths = params.get("grid"), params.get("lengths") or []
        lengths = [lengths] if isinstance(lengths, int) else lengths
        short = [length for length in lengths if grid is not None and int(length) < int(grid)]
        if short:
            raise HarnessError(f"task.lengths {short} are shorter than task.grid ({grid}): every bin needs a token")

    @classmethod
    def samples_per_length(cls, params: dict) -> int:
        """One input (one forward) per length; it writes many rows (plan_notes says how many)."""
        return 1

    @classmethod
    def plan_notes(cls, params: dict) -> list[str]:
        grid, layers, heads = int(params["grid"]), params.get("layers") or [], params.get("heads")
        rows = len(layers) * (len(heads) if heads else 1) * grid * (grid + 1) // 2
        return [f"one forward per length, without a KV cache, plus ceil(grid / head_dim) more attention calls per "
                f"chosen layer (one-hot values); {rows} rows per length (layers x heads x grid cells on or below "
                "the diagonal)"]

    @classmethod
    def summary_table(cls, frame):
        """Per length, layer and head: the mean weight on the first key bin (the attention sink) and
        on the query's own bin (local attention), over every query bin."""
        ok = frame[frame["status"] == "ok"]
        if ok.empty:
            return None
        ok = ok.assign(sink=ok["score"].where(ok["key_bin"] == 0),
                       own=ok["score"].where(ok["key_bin"] == ok["query_bin"]))
        return ok.groupby(["length", "layer", "head"]).agg(
            rows=("score", "count"), weight_on_first_bin=("sink", "mean"), weight_on_own_bin=("own", "mean"),
            seconds=("seconds", "first")).round(4)

    def __init__(self, *args, layers: list[int] = (0, -1), heads: list[int] | None = None, grid: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        layers = [layers] if isinstance(layers, int) else list(layers)
        heads = [heads] if isinstance(heads, int) else (None if heads is None else list(heads))
        self.check_params(dict(layers=layers, heads=heads, grid=grid, lengths=self.lengths))
        self.layers = [int(layer) for layer in layers]
        self.heads = None if heads is None else [int(head) for head in heads]
        self.grid = int(grid)

    def input_ids(self, length: int) -> list[int]:
        """The passkey task's sample 0 of ``length`` tokens (its prompt template and seed)."""
        return make_sample(self.tokenizer, self.prompt_template, length, self.seed, 0).input_ids

    def check_model(self, model: torch.nn.Module) -> None:
        check_layers(model, self.layers)
        heads = int(getattr(model.config, "num_attention_heads", 0) or 0)
        bad = [head for head in self.heads or () if heads and head >= heads]
        if bad:
            raise HarnessError(f"task.heads {bad} out of range: the model has {heads} attention heads (0..{heads - 1})")
        why = probe_support(model)
        if why is not None:
            raise HarnessError(f"task {self.name!r}: {why}")

    def evaluate_length(self, model: torch.nn.Module, length: int) -> list[dict[str, Any]]:
        self.check_model(model)  # an index past the last layer must not wrap around to another layer
        ids = self.input_ids(length)
        if len(ids) < self.grid:
            raise ValueError(f"the prompt has {len(ids)} tokens, fewer than task.grid ({self.grid})")
        count = len(architecture_of(model).layers_of(model))
        chosen = [index % count for index in self.layers]
        maps = attention_maps(model, ids, sorted(set(chosen)), self.grid)
        starts, digest = bin_starts(len(ids), self.grid), input_hash(ids)
        rows = []
        for layer in chosen:
            per_head = maps[layer]  # (query bin, head, key bin)
            views = ([(ALL_HEADS, per_head.mean(1))] if self.heads is None
                     else [(head, per_head[:, head]) for head in self.heads])
            for head, grid in views:
                values = grid.tolist()
                for query_bin in range(self.grid):
                    for key_bin in range(query_bin + 1):
                        rows.append(dict(sample=len(rows), score=values[query_bin][key_bin], tokens=len(ids),
                                         input_hash=digest, layer=layer, head=head, query_bin=query_bin,
                                         key_bin=key_bin, query_start=starts[query_bin], key_start=starts[key_bin],
                                         train_length=self.train_length))
        return rows

"""Plan mode (``plan=true``): what a job or sweep will run, without loading any weights.

For each length of a job it lists how many samples already have rows (from the job's results
file), how many are left, the tokens those will process, and an estimate of the peak memory of
one sample. The estimate is arithmetic on the model's architecture (from ``model.architecture``,
``model.local_path/config.json`` or the embedded model's converted config):

    weights + KV cache (input + new tokens) + max(prefill working set, decode extras)

* weights: the parameter count of the architecture's shape (harness.architectures) times the dtype's bytes;
* prefill working set: one layer's transient tensors (hidden states, q/k/v, MLP activations),
  the method's attention scratch (``Method.prefill_attention_bytes``; on an ALiBi model MPT's
  own eager scores plus the method's bias, ``Method.alibi_prefill_attention_bytes``, whatever
  ``attn_implementation`` says: MPT has no other), and the logits the task builds;
* decode extras: the key copies the method keeps while decoding (``Method.decode_key_copies``;
  none on an ALiBi model, whose keys are never rotated).

It is an estimate: allocator overheads, fragmentation and framework buffers are not modelled.
docs/reproduction.md compares it with measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from harness.architectures import Shape, architecture_for, context_length, rope_kind
from harness.constants import DEFAULT_ATTN_IMPLEMENTATION, DTYPE_BYTES
from harness.job import check_job, results_path, task_class_from_config
from harness.results import ResultsFile
from tasks import TASKS

if TYPE_CHECKING:
    from harness.methods import Method

GIB = 2**30


@dataclass
class CellPlan:
    length: int  # in the task's length_unit
    samples: int
    done: int
    prompt_tokens: int  # of one sample's input (an estimate where length is not in tokens)
    new_tokens: int
    memory: dict[str, float] = field(default_factory=dict)  # GiB per part, and "total"

    @property
    def to_run(self) -> int:
        return self.samples - self.done

    @property
    def tokens_to_run(self) -> int:
        return self.to_run * (self.prompt_tokens + self.new_tokens)


@dataclass
class JobPlan:
    job: str
    path: Path
    cells: list[CellPlan]
    shape_source: str  # where the architecture came from, or why there is no estimate
    notes: list[str] = field(default_factory=list)  # printed under the table

    @property
    def to_run(self) -> int:
        return sum(c.to_run for c in self.cells)

    @property
    def done(self) -> int:
        return sum(c.done for c in self.cells)

    @property
    def tokens_to_run(self) -> int:
        return sum(c.tokens_to_run for c in self.cells)


def model_shape(model_cfg: dict) -> tuple[Shape | None, str]:
    """The architecture without loading weights, and where it came from."""
    from harness.models import cache_root

    local = model_cfg.get("local_path")
    candidates = []
    if local:
        candidates.append(Path(local).expanduser() / "config.json")
    if model_cfg.get("source") == "gguf_package":
        candidates.append(cache_root() / model_cfg["name"] / "config.json")
    for path in candidates:
        if path.is_file():
            return shape_of(json.loads(path.read_text())), str(path)
    if model_cfg.get("architecture"):
        return shape_of(dict(model_cfg["architecture"])), "model.architecture"
    return None, "no architecture known without loading the model (set model.architecture or model.local_path)"


def shape_of(config: dict) -> Shape:
    """The shape of a transformers config dict, read by its architecture's entry."""
    return architecture_for(config).shape(config)


def estimate_memory(shape: Shape, method: Method, length: int, new_tokens: int, logits_positions: int, dtype: str,
                    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> dict[str, float]:
    """Estimated peak memory (GiB) of one sample of ``length`` input tokens and ``new_tokens``
    generated ones, by part; the task holds ``logits_positions`` positions' logits at once."""
    b = DTYPE_BYTES.get(dtype, 4)
    tokens = length + new_tokens
    kv_layer = 2 * tokens * shape.kv_heads * shape.head_dim * b
    if shape.positions == "alibi":
        attention = method.alibi_prefill_attention_bytes(shape, length, b)
    else:
        attention = method.prefill_attention_bytes(shape, length, b, attn_implementation)
    layer_prefill = (
        3 * length * shape.width * b  # residual stream, normed input, layer output
        + length * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * b  # q, k, v
        + max(3 * length * shape.intermediate * b, attention)  # MLP: gate, up, their product
        + logits_positions * shape.vocab * 4  # float32 logits
    )
    copies = 0 if shape.positions == "alibi" else method.decode_key_copies  # ALiBi: no rotated keys to keep
    decode_extra = copies * shape.layers * kv_layer // 2 if new_tokens else 0
    parts = dict(weights=shape.parameters * b, kv_cache=shape.layers * kv_layer, work=max(layer_prefill, decode_extra))
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def plan_job(cfg: DictConfig) -> JobPlan:
    """The plan of one job (no weights, tokenizer or corpus is loaded)."""
    from harness.methods import method_from_config

    lengths, samples = check_job(cfg, plan=True)  # the device is the one planned for, not this machine's
    path, _ = results_path(cfg)
    # what a run would compute
    done = ResultsFile(path, [], tasks=TASKS).done(retry_failed=bool(cfg.get("retry_failed")))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    task_params = OmegaConf.to_container(cfg.task, resolve=True)
    task = task_class_from_config(cfg.task)  # its facts are class methods: nothing is built
    train_length = model_cfg.get("train_length") or context_length(model_cfg.get("architecture") or {})
    method = method_from_config(cfg.method, train_length)  # checks the method's settings too
    shape, source = model_shape(model_cfg)
    architecture = model_cfg.get("architecture")
    if architecture:  # a method that refuses this model is refused here too, before any time is spent
        method.check_positions(architecture_for(architecture).model_type, rope_kind(dict(architecture)))
    new_tokens = task.generated_tokens(task_params)
    if task.whole_length:  # the task decides its samples; a length is done once it has rows
        samples = task.samples_per_length(task_params)
    cells = []
    for length in lengths:
        if task.whole_length:
            n_done = samples if any(key[0] == length for key in done) else 0
        else:
            n_done = sum((length, i) in done for i in range(samples))
        tokens = task.prompt_tokens(length, task_params)
        memory = estimate_memory(shape, method, tokens, new_tokens, task.logits_positions(task_params), cfg.dtype,
                                 model_cfg.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION) if shape else {}
        cells.append(CellPlan(length, samples, n_done, tokens, new_tokens, memory))
    notes = []
    if task.length_unit != "tokens":
        first = cells[0]
        notes.append(f"length counts {task.length_unit}, not tokens; tokens and memory use the task's estimate of an "
                     f"input's tokens ({first.prompt_tokens:,} for {first.length} {task.length_unit})")
    notes += task.plan_notes(task_params)
    return JobPlan(f"model={cfg.model.name} method={method.name} task={cfg.task.name}", path, cells, source, notes)


def format_plan(plan: JobPlan) -> str:
    lines = [f"plan: {plan.job} -> {plan.path}",
             f"  {'length':>8} {'samples':>7} {'done':>5} {'to run':>6} {'tokens to run':>14} {'est. peak GiB':>14}"
             "  (weights + KV cache + work)"]
    for c in plan.cells:
        m = c.memory
        memory = (f"{m['total']:14.2f}  ({m['weights']:.2f} + {m['kv_cache']:.2f} + {m['work']:.2f})" if m
                  else f"{'?':>14}")
        lines.append(f"  {c.length:>8} {c.samples:>7} {c.done:>5} {c.to_run:>6} {c.tokens_to_run:>14,} {memory}")
    if not any(c.memory for c in plan.cells):
        lines.append(f"  memory: {plan.shape_source}")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)

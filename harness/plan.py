"""Plan mode (``plan=true``): what a job or sweep will run, without loading any weights.

For each length of a job it lists how many samples already have rows (from the job's results
file), how many are left, the tokens those will process, and an estimate of the peak memory of
one sample. The estimate is arithmetic on the model's architecture (from ``model.architecture``,
``model.local_path/config.json`` or the embedded model's converted config):

    weights + KV cache (input + new tokens) + max(prefill working set, decode extras)

* weights: the parameter count of a LLaMA-style decoder times the dtype's bytes;
* prefill working set: one layer's transient tensors (hidden states, q/k/v, MLP activations),
  the method's attention scratch, and the logits the task builds;
* decode extras: rotated key copies the weave methods keep while decoding.

It is an estimate: allocator overheads, fragmentation and framework buffers are not modelled.
docs/reproduction.md compares it with measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.job import check_job, method_settings, results_path
from harness.results import ResultsFile

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Rotated key copies (each the size of one layer's K cache) a method keeps per layer while decoding.
# ReRoPE: the near-rotated keys (its far rule uses the un-rotated keys); Leaky-ReRoPE: near and
# far; Mesa: the stair-rotated keys.
DECODE_KEY_COPIES = {"rerope": 1, "leaky-rerope": 2, "mesa": 1}


@dataclass
class Shape:
    """What the estimate needs from a transformers config."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(vocab=int(config["vocab_size"]), hidden=hidden, layers=int(config["num_hidden_layers"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads),
                   intermediate=int(config["intermediate_size"]), tied=bool(config.get("tie_word_embeddings", False)))

    @property
    def parameters(self) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)  # q, o and k, v
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * (attention + mlp + 2 * self.hidden) + self.hidden


@dataclass
class CellPlan:
    length: int
    samples: int
    done: int
    new_tokens: int
    memory: dict[str, float] = field(default_factory=dict)  # GiB per part, and "total"

    @property
    def to_run(self) -> int:
        return self.samples - self.done

    @property
    def tokens_to_run(self) -> int:
        return self.to_run * (self.length + self.new_tokens)


@dataclass
class JobPlan:
    job: str
    path: Path
    cells: list[CellPlan]
    shape_source: str  # where the architecture came from, or why there is no estimate

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
            return Shape.from_config(json.loads(path.read_text())), str(path)
    if model_cfg.get("architecture"):
        return Shape.from_config(dict(model_cfg["architecture"])), "model.architecture"
    return None, "no architecture known without loading the model (set model.architecture or model.local_path)"


def attention_scratch_bytes(method: str, params: dict, shape: Shape, length: int, dtype_bytes: int,
                            attn_implementation: str = "sdpa") -> int:
    """Transient attention memory of one layer's prefill, beyond q/k/v (see harness/methods/attention.py)."""
    per_token = shape.heads * shape.head_dim * dtype_bytes  # one (L, H, D) tensor per token
    kv_per_token = shape.kv_heads * shape.head_dim * dtype_bytes
    blocks = 2 * int(params.get("block_bytes", 64 * 2**20))  # explicit kernels: scores of one query block
    if method in ("rerope", "leaky-rerope"):
        # near-rotated q/k, far-rotated q (and k for Leaky), the band's blocked (padded, flipped)
        # copies of q/k/v, two partial outputs and the merged one
        copies = DECODE_KEY_COPIES[method]
        fused = 5 * length * per_token + (2 + copies) * length * kv_per_token
        return fused + (blocks if attn_implementation == "eager" else 0)
    if method == "mesa":
        # stair-rotated keys, stacked middle chunks (q, k, v, out ~ 4 x (L, H, D)), the last chunk's two parts
        return length * kv_per_token + 4 * length * per_token + (blocks if attn_implementation == "eager" else 0)
    if attn_implementation == "eager":  # the full (H, L, L) scores and their softmax, in the model's dtype
        return 2 * shape.heads * length * length * dtype_bytes
    # stock SDPA (origin, dynamic-ntk): K/V repeated to all heads for GQA, and the output
    return 3 * length * per_token


def logits_bytes(task_cfg: dict, shape: Shape) -> int:
    if task_cfg.get("name", "").startswith("ppl"):
        return 2 * int(task_cfg.get("score_chunk", 1024)) * shape.vocab * 4  # logits + log-softmax, float32
    return shape.vocab * 4  # generation and speed keep the last position only


def estimate_memory(shape: Shape, method: str, params: dict, task_cfg: dict, length: int, new_tokens: int,
                    dtype: str, attn_implementation: str = "sdpa") -> dict[str, float]:
    """Estimated peak memory (GiB) of one sample, by part."""
    b = DTYPE_BYTES.get(dtype, 4)
    tokens = length + new_tokens
    kv_layer = 2 * tokens * shape.kv_heads * shape.head_dim * b
    layer_prefill = (
        3 * length * shape.hidden * b  # residual stream, normed input, layer output
        + length * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * b  # q, k, v
        + max(3 * length * shape.intermediate * b,  # MLP: gate, up, their product
              attention_scratch_bytes(method, params, shape, length, b, attn_implementation))
        + logits_bytes(task_cfg, shape)
    )
    decode_extra = DECODE_KEY_COPIES.get(method, 0) * shape.layers * kv_layer // 2 if new_tokens else 0
    parts = dict(weights=shape.parameters * b, kv_cache=shape.layers * kv_layer, work=max(layer_prefill, decode_extra))
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def new_tokens_of(task_cfg: dict) -> int:
    return int(task_cfg.get("max_new_tokens") or task_cfg.get("decode_steps") or 0)


def plan_job(cfg: DictConfig) -> JobPlan:
    """The plan of one job (no weights, tokenizer or corpus is loaded)."""
    lengths, samples = check_job(cfg)
    path, _ = results_path(cfg)
    done = ResultsFile(path, []).done()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    method, params = method_settings(cfg.method)
    shape, source = model_shape(model_cfg)
    new_tokens = new_tokens_of(task_cfg)
    cells = []
    for length in lengths:
        n_done = sum((length, i) in done for i in range(samples))
        memory = estimate_memory(shape, method, params, task_cfg, length, new_tokens, cfg.dtype,
                                 model_cfg.get("attn_implementation") or "sdpa") if shape else {}
        cells.append(CellPlan(length, samples, n_done, new_tokens, memory))
    return JobPlan(f"model={cfg.model.name} method={method} task={cfg.task.name}", path, cells, source)


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
    return "\n".join(lines)

"""Names the configs, the loader, plan mode and the results share, kept in one place."""

from __future__ import annotations

# dtype names a job accepts (`dtype=`), and their bytes per element (plan mode's arithmetic).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPES = tuple(DTYPE_BYTES)

# transformers' attention implementations the methods support (`model.attn_implementation`):
# sdpa, torch's fused kernels (the weave methods use fused kernels too), the default; eager,
# explicit scores (Origin's L x L matrix, the paper's baseline; the weave methods' blocked kernels).
SDPA, EAGER = "sdpa", "eager"
ATTN_IMPLEMENTATIONS = (SDPA, EAGER)
DEFAULT_ATTN_IMPLEMENTATION = SDPA

# How a task's text is wrapped for a model (`model.prompt_template`; tasks/prompts.py applies them).
PROMPT_TEMPLATES = ("raw", "chat", "llama2", "vicuna")

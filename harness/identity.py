"""What identifies a job's rows, as bottom-layer facts every other module may import: the hash of
a job's config (in its results file's name and every row's ``config_hash``), the hash of an
input's tokens (every row's ``input_hash``) and the directory the command was started in (what
relative paths such as ``results_dir`` are relative to).

Committed results files are named and matched by these hashes: changing how either is computed
moves every committed file (tests/test_identity.py recomputes them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def config_hash(payload: dict) -> str:
    """Short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def input_hash(input_ids: list[int]) -> str:
    """Content hash of an input's token ids: equal hashes mean two methods saw the same tokens."""
    return hashlib.sha256(json.dumps(input_ids).encode()).hexdigest()[:16]


def original_cwd() -> Path:
    """Where the command was started: Hydra's original working directory, else the current one."""
    from hydra.core.hydra_config import HydraConfig  # Hydra only when asked: plots and collect never need it

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()

"""``device=``: checked before anything is loaded, so a device this machine does not have is one line.

Without the check, ``device=cuda`` on a CPU-only torch fails deep inside the model load with
``AssertionError: Torch not compiled with CUDA enabled``, and ``device=gpu`` with torch's
"Expected one of cpu, cuda, ... device type" message. ``python -m harness`` calls
:func:`check_device`; ``plan=true`` calls only :func:`check_device_name`, because a plan is made
where the sweep is prepared (a cluster's login node, a laptop), not on the machine it plans for.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError

KINDS = ("cpu", "cuda", "mps")  # what the harness runs on; "cuda:N" picks one GPU


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device_name(device: str) -> torch.device:
    """The parsed device if ``device`` names one the harness runs on (cpu, cuda, cuda:N, mps),
    whether or not this machine has it; else a one-line :class:`HarnessError` (a typo such as ``gpu``)."""
    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in KINDS or (parsed.type == "cpu" and parsed.index not in (None, 0)):
        raise HarnessError(f"device={text!r} is not a device this harness runs on; use cpu, cuda, cuda:N or mps")
    return parsed


def check_device(device: str, cuda_count=_cuda_count, mps_available=None) -> str:
    """The device string, unchanged, if this machine has it; else a one-line :class:`HarnessError`.

    ``cuda_count`` and ``mps_available`` are injectable for tests (defaults: ask torch)."""
    text = str(device).strip()
    parsed = check_device_name(text)
    if parsed.type == "cuda":
        count = cuda_count()
        if count == 0:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise HarnessError(f"device={text!r}, but {why} (torch {torch.__version__}); use device=cpu")
        if parsed.index is not None and parsed.index >= count:
            raise HarnessError(f"device={text!r}, but only {count} CUDA GPU(s) are visible "
                               f"(cuda:0..cuda:{count - 1}); CUDA_VISIBLE_DEVICES renumbers them from 0")
    if parsed.type == "mps":
        available = mps_available() if mps_available else torch.backends.mps.is_available()
        if not available:
            raise HarnessError(f"device={text!r}, but this machine has no MPS (Apple GPU) backend; use device=cpu")
    return text

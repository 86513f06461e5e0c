"""Timing and peak-memory measurement that isolates one piece of work.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` after a reset (tensors only). On CPU
there is no allocator counter, and the process's lifetime maximum RSS would mix in model loading,
so a background thread samples the resident set size every millisecond while the work runs and
reports the peak above the RSS measured just before it started. The sampled peak can miss a
spike shorter than the sampling interval; for the multi-second prefills measured here that
bias is small, and every method is measured the same way.

Memory freed by earlier work stays resident in glibc's heap, so a second measurement in the same
process would reuse those pages and read ~0. Before each CPU measurement we therefore collect
garbage and call ``malloc_trim(0)``, which returns free heap pages to the OS: the next piece of
work faults in what it needs and its RSS peak is its own. (Where glibc is missing, e.g. macOS,
only the first measurement in a process is reliable; a warning says so.)

That preparation costs time: faulting the released pages back in added ~30% to a one-token decode
step of SmolLM2 at 8k tokens on a CPU (184 ms instead of 138). So :class:`measure` is for work whose
memory is wanted (a prefill, one decoding step), and :class:`stopwatch` times work that repeats
(decoding steps): wall time only, with the device synchronised on CUDA, and nothing else done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
import warnings
from dataclasses import dataclass
from functools import cache

import psutil
import torch


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_bytes: int = 0  # peak above the level just before the work started
    baseline_bytes: int = 0  # the level just before (RSS on CPU, allocated tensors on CUDA)


@cache
def _malloc_trim():
    """glibc's ``malloc_trim`` or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return freed heap memory to the OS so that RSS reflects live memory only; True on success."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class stopwatch:
    """Context manager: ``with stopwatch(device) as t: work()`` then read ``t.seconds``: wall time
    only (no garbage collection, no heap trim, no sampler thread); on CUDA the device is
    synchronised before and after, so queued kernels count where they run."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.result = Measurement()

    def __enter__(self) -> Measurement:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        return self.result

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.result.seconds = time.perf_counter() - self._start


class measure:
    """Context manager: ``with measure(device) as m: work()`` then read ``m.seconds``, ``m.peak_bytes``."""

    def __init__(self, device: str | torch.device = "cpu", interval_s: float = 0.001):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.result = Measurement()
        self._stop = threading.Event()
        self._peak_rss = 0

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self._peak_rss = max(self._peak_rss, process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> Measurement:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # work queued before is not this measurement's
            torch.cuda.reset_peak_memory_stats(self.device)
            self.result.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            if not release_free_memory():
                warnings.warn("no malloc_trim here: CPU peak memory is reliable only for the first "
                              "measurement in a process", RuntimeWarning, stacklevel=2)
            self.result.baseline_bytes = self._peak_rss = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._clock = stopwatch(self.device)
        self._clock.__enter__()
        return self.result

    def __exit__(self, *exc) -> None:
        self._clock.__exit__(*exc)
        self.result.seconds = self._clock.result.seconds
        if self.device.type == "cuda":
            self.result.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.result.baseline_bytes
        else:
            self._stop.set()
            self._thread.join()
            self._peak_rss = max(self._peak_rss, psutil.Process().memory_info().rss)
            self.result.peak_bytes = self._peak_rss - self.result.baseline_bytes

"""harness.measure: CPU peak memory must be right for every measurement in a process, not only the first."""

import sys

import pytest
import torch

from harness import measure as measure_module
from harness.measure import measure

MB = 2**20


def _allocate_small_chunks(total_mb: int = 96, chunk_kb: int = 64) -> list[torch.Tensor]:
    # Chunks below glibc's mmap threshold live in the heap, where free() keeps them resident.
    chunks = []
    for _ in range(total_mb * 1024 // chunk_kb):
        chunks.append(torch.ones(chunk_kb * 1024 // 4))
    return chunks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS accounting of glibc's heap")
def test_second_cpu_measurement_sees_memory_freed_by_the_first():
    peaks = []
    for _ in range(2):
        with measure("cpu") as m:
            chunks = _allocate_small_chunks()
        del chunks
        peaks.append(m.peak_bytes / MB)
    assert peaks[0] > 60, peaks
    assert peaks[1] > 0.6 * peaks[0], f"second measurement read {peaks[1]:.0f} MB after {peaks[0]:.0f} MB: freed heap was reused"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS accounting of glibc's heap")
def test_without_trim_the_second_measurement_is_wrong(monkeypatch):
    # Shows that the trim is what makes the test above pass (so that test can fail).
    measure_module.release_free_memory()  # start from a trimmed heap, then stop trimming
    monkeypatch.setattr(measure_module, "release_free_memory", lambda: True)
    peaks = []
    for _ in range(2):
        with measure("cpu") as m:
            chunks = _allocate_small_chunks()
        del chunks
        peaks.append(m.peak_bytes / MB)
    assert peaks[1] < 0.3 * peaks[0], peaks


def test_measure_times_the_work():
    import time

    with measure("cpu") as m:
        time.sleep(0.05)
    assert 0.045 < m.seconds < 1.0
    assert m.baseline_bytes > 0

"""harness.measure: CPU peak memory must be right for every measurement in a process, not only the first."""

import sys

import pytest
import torch

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
    # Without the trim this reads a fraction of the first (checked by hand; how much depends on
    # the heap's state, so that direction is not a test of its own).
    assert peaks[1] > 0.6 * peaks[0], (f"second measurement read {peaks[1]:.0f} MB after {peaks[0]:.0f} MB: "
                                       "freed heap was reused")


def test_measure_times_the_work():
    import time

    with measure("cpu") as m:
        time.sleep(0.05)
    assert 0.045 < m.seconds < 1.0
    assert m.baseline_bytes > 0


def test_stopwatch_times_the_work_and_nothing_else(monkeypatch):
    """stopwatch (the decode steps' timer) neither collects garbage nor trims the heap."""
    import time

    from harness.measure import stopwatch

    monkeypatch.setattr("harness.measure.release_free_memory", lambda: pytest.fail("stopwatch must not trim"))
    monkeypatch.setattr("gc.collect", lambda *a: pytest.fail("stopwatch must not collect garbage"))
    with stopwatch("cpu") as t:
        time.sleep(0.05)
    assert 0.045 < t.seconds < 1.0

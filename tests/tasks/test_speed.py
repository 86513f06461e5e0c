"""The memory/speed task: deterministic inputs, sane columns, and a CPU peak that is right for every sample."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.speed import SpeedTask
from tests.conftest import tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_inputs_are_seeded_and_differ_per_sample():
    task = SpeedTask(lengths=[64], samples=2, vocab_size=256)
    assert task.build_input(64, 0) == SpeedTask(lengths=[64], samples=2, vocab_size=256).build_input(64, 0)
    assert task.build_input(64, 0) != task.build_input(64, 1)
    assert task.build_input(64, 0).tokens == 64
    assert max(task.build_input(64, 0).input_ids) < 256


def test_row_columns():
    task = SpeedTask(lengths=[96], samples=1, vocab_size=256, decode_steps=3, repeats=2)
    row = task.evaluate(tiny_model(), task.build_input(96, 0))
    assert set(task.columns) <= set(row)
    assert row["score"] == row["prefill_s"] > 0
    assert row["prefill_tokens_per_s"] == pytest.approx(96 / row["prefill_s"])
    assert row["decode_ms_per_token"] > 0 and row["repeats"] == 2


def test_speed_task_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        SpeedTask(lengths=[64], samples=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap behaviour")
def test_every_sample_of_a_job_reads_its_own_peak():
    # With the mmap threshold raised (as the CPU speed preset recommends), every tensor lives in
    # glibc's heap; without returning freed pages to the OS the second sample would read ~0 MB.
    script = textwrap.dedent("""
        import json
        from tasks.speed import SpeedTask
        from tests.conftest import tiny_model
        model = tiny_model(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4,
                           head_dim=32)
        task = SpeedTask(lengths=[2048], samples=3, vocab_size=256, decode_steps=1)
        print(json.dumps([task.evaluate(model, task.build_input(2048, i))["peak_mb"] for i in range(3)]))
    """)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**32),
               PYTHONPATH=str(REPO_ROOT), OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True)
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks[0] > 20, peaks
    assert min(peaks[1:]) > 0.5 * peaks[0], f"later samples read less than half the first: {peaks}"

"""The memory/speed task: deterministic inputs, sane columns, and a CPU peak that is right for every sample."""

import json
import os
import subprocess
import sys
import textwrap
import time
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


def _slow_trim(calls: list, seconds: float):
    """A stand-in for harness.measure.release_free_memory that counts its calls and costs ``seconds``:
    the measurement's own cost made large and deterministic."""
    def trim() -> bool:
        calls.append(1)
        time.sleep(seconds)
        return True
    return trim


@pytest.mark.parametrize("decode_steps", [2, 6])
def test_decode_steps_are_timed_without_the_measurements_own_cost(monkeypatch, decode_steps):
    """measure() trims the heap before each CPU measurement, so a step under it faults its pages back
    in (SmolLM2 at 8k: 184 ms/token against a plain loop's 138). With a trim that takes 200 ms, a
    step timed under measure() would read >= 200 ms; the task's decode steps must not call it at all:
    one trim before the prefill and one before the single step measured for memory, however many steps."""
    calls = []
    monkeypatch.setattr("harness.measure.release_free_memory", _slow_trim(calls, 0.2))
    task = SpeedTask(lengths=[64], samples=1, vocab_size=256, decode_steps=decode_steps, warmup_tokens=8)
    row = task.evaluate(tiny_model(), task.build_input(64, 0))
    assert len(calls) == 2, f"{len(calls)} trims for {decode_steps} decode steps"
    assert 0 < row["decode_ms_per_token"] < 100, row["decode_ms_per_token"]
    assert row["decode_peak_mb"] is not None


def test_no_decode_steps_leave_the_decode_columns_empty(monkeypatch):
    calls = []
    monkeypatch.setattr("harness.measure.release_free_memory", _slow_trim(calls, 0))
    task = SpeedTask(lengths=[64], samples=1, vocab_size=256, decode_steps=0, warmup_tokens=8)
    row = task.evaluate(tiny_model(), task.build_input(64, 0))
    assert len(calls) == 1  # the prefill's
    assert row["decode_ms_per_token"] is None and row["decode_peak_mb"] is None
    assert SpeedTask.generated_tokens({"decode_steps": 0}) == 0
    assert SpeedTask.generated_tokens({"decode_steps": 8}) == 9  # the timed steps and the one measured


@pytest.mark.slow
def test_decode_on_smollm2_is_within_10_percent_of_a_plain_loop():
    """The real check (about 2 minutes on 2 cores; nothing else should run): the task's decode ms/token
    on SmolLM2 at 2048 tokens against a plain perf_counter loop on the same model and input,
    benchmarks/decode_overhead.py exits 1 above 1.10x."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "decode_overhead.py"), "--length", "2048",
                          "--max-ratio", "1.10"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-1000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["task / plain"] <= 1.10


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

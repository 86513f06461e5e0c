"""benchmarks/device_parity.py, the GPU check's first step, runs end to end on the CPU."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_device_parity_script_writes_a_row_per_method_and_step(tmp_path):
    out = tmp_path / "parity.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_parity.py"), "--device", "cpu", "--model", "tiny-random",
         "--length", "300", "--decode-steps", "2", "--methods", "origin", "mesa", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(out)
    assert len(rows) == 2 * 2 * 3  # methods x implementations x (prefill + 2 steps)
    assert set(rows["status"]) == {"ok"} and (rows["max_abs_diff"] == 0).all()

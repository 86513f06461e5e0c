"""Tidy, resumable results: one CSV per job, one row per (model, method, task, length, sample).

Layout (documented in README.md)::

    results/runs/<task>/<model>/<method>-<config_hash>.csv    rows, appended one by one
    results/runs/<task>/<model>/<method>-<config_hash>.yaml   the job's full config (provenance)
    results/all.csv                                            everything, from `python -m harness.collect`

Why this is safe:
* every row is written with one ``write`` of a whole line, flushed and fsync'ed, so a crash or
  kill loses at most the sample in flight (a torn last line is cut off on the next open);
* a rerun reads the (length, sample) pairs already present and computes only the rest, so it
  never duplicates a row;
* each job owns its file (the config hash is in the name) and holds an exclusive lock on it while
  it runs, so parallel multirun jobs never write into one file, and a second copy of the same job
  stops with a clear error instead of interleaving rows.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError

COMMON_COLUMNS = [
    "model", "method", "task", "metric", "length", "sample", "status", "score", "tokens", "input_hash",
    "seconds", "message", "seed", "device", "dtype", "method_params", "config_hash", "git_rev", "versions",
    "timestamp",
]
STATUSES = ("ok", "oom", "error")


def config_hash(payload: dict) -> str:
    """Short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def input_hash(input_ids: list[int]) -> str:
    """Content hash of an input's token ids: equal hashes mean two methods saw the same tokens."""
    return hashlib.sha256(json.dumps(input_ids).encode()).hexdigest()[:16]


class ResultsFile:
    """The CSV of one job. Use as a context manager: it holds the file's lock while open."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self._fd: int | None = None
        self._lock_fd: int | None = None

    # -- reading --------------------------------------------------------------------------
    def read(self) -> pd.DataFrame:
        """The rows already written (an empty frame if none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=self.columns or COMMON_COLUMNS)
        text = self.path.read_text()
        if not text.endswith("\n"):  # a torn last line (killed mid-write) is not a row; it is cut on the next write
            text = text[: text.rfind("\n") + 1]
        try:
            frame = pd.read_csv(io.StringIO(text), dtype={"input_hash": str, "config_hash": str, "answer": str})
        except Exception as error:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise HarnessError(f"results file {self.path} is corrupted ({error}); move it away and rerun") from None
        missing = [c for c in ("length", "sample", "status") if c not in frame.columns]
        if missing or (len(frame) and not frame["status"].isin(STATUSES).all()):
            raise HarnessError(f"results file {self.path} is corrupted (unexpected columns or status); move it away and rerun")
        return frame

    def done(self) -> set[tuple[int, int]]:
        """(length, sample) pairs that already have a row, whatever their status."""
        frame = self.read()
        return {(int(a), int(b)) for a, b in zip(frame["length"], frame["sample"])}

    # -- writing --------------------------------------------------------------------------
    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise HarnessError(f"another run is writing {self.path}; wait for it or stop it") from None
        self._repair_torn_line()
        self._fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size == 0:
            self._write_line(self.columns)
        else:
            header = next(csv.reader([self.path.open().readline()]))
            if header != self.columns:
                self.close()
                raise HarnessError(f"results file {self.path} has other columns than this task writes; move it away")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def append(self, row: dict) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns the file does not: {sorted(unknown)}")
        self._write_line(["" if row.get(c) is None else row.get(c) for c in self.columns])

    def _write_line(self, values: list) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        os.write(self._fd, buffer.getvalue().encode())
        os.fsync(self._fd)

    def _repair_torn_line(self) -> None:
        """A kill during a write can leave a partial last line: cut it, so the file stays valid CSV."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)


def collect(root: Path, out: Path) -> pd.DataFrame:
    """Concatenate every job's CSV under ``root`` into one CSV at ``out`` (written atomically)."""
    files = sorted(Path(root).glob("runs/**/*.csv"))
    frames = [ResultsFile(f, []).read() for f in files]
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMMON_COLUMNS)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return table

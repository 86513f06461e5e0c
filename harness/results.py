"""Tidy, resumable results: one CSV per job, one row per (model, method, task, length, sample).

Layout (documented in README.md; ``results_dir`` is relative to where the command is started)::

    <results_dir>/runs/<task>/<model>/<method>-<config_hash>.csv    rows, appended one by one
    <results_dir>/runs/<task>/<model>/<method>-<config_hash>.yaml   the job's full config (provenance)
    <results_dir>/all.csv                                            everything, from `python -m harness.collect`

Why this is safe:
* every row is written with whole-line writes under a short exclusive write lock, then fsync'ed, so
  a crash or kill loses at most the sample in flight (a torn last line is cut off before the next
  write and ignored by readers);
* a sample is computed only by the process holding its claim, a POSIX record lock on one byte of
  the job's ``.lock`` file; the kernel drops the claims of a process that dies, so a killed or
  pre-empted job's samples are free again at once;
* a claimed sample is computed only if the file has no row for it yet, so no row is ever written
  twice, and jobs that write into one file (the same job started twice, or one job split by
  lengths over several processes) share the work instead of failing;
* a write that fails (disk full, quota) is rolled back to the last whole row and stops the job
  with a one-line error; nothing already written is touched;
* a failed sample (``error``/``oom``) is computed again only when asked (``retry_failed=true``),
  and its new row is appended after the failed one, never written over it: every reader here
  (:meth:`ResultsFile.read`, :func:`read_rows`, so resuming, the run summary, collect, compare and
  the figures) keeps only the newest attempt (:func:`latest_attempts`). The file stays
  append-only, so a crash during a retry leaves the failed row as it was, and the failure stays on
  record in the file.
The results directory must be on a filesystem with POSIX locks (local disks and NFS have them).

A task that evaluates every sample of a length at once (``Task.whole_length``) claims the length
instead of a sample; its rows are appended together, and a row with sample -1 is about all the
samples of its length (an aggregate score, or the failure of the whole length).

This module knows the common columns only. What a task's rows add (their types, which are
measured, which it may write) its callers pass in as ``tasks``, the task registry
(``tasks.TASKS``): storing rows and computing them sit side by side, neither importing the other
(tests/test_layers.py).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import pandas as pd

from harness.errors import HarnessError

COMMON_COLUMNS = [
    "model", "method", "task", "metric", "length", "sample", "status", "score", "tokens", "input_hash",
    "seconds", "message", "seed", "device", "dtype", "attn_implementation", "method_params", "config_hash", "git_rev",
    "versions", "timestamp", "label",
]
# Common columns added after rows were committed: a file written before has no such column and is
# still appended to, as long as the rows leave it empty (a labelled job has a file of its own).
LATER_COLUMNS = ("label",)
STATUSES = ("ok", "oom", "error")
# Common columns that differ between two runs of the same sweep (wall-clock); each task states its
# own measured columns (``Task.timing_columns``). Everything else in a row is a pure function of
# the config (tests check this).
COMMON_TIMING_COLUMNS = ("seconds", "timestamp")
COMMON_TEXT_COLUMNS = ("input_hash", "config_hash", "label")  # hex strings that may look like numbers; a label "8192"
ROW_KEY = ["model", "method", "task", "config_hash", "length", "sample"]
# Claims are POSIX record locks on single bytes of the job's .lock file: byte 0 is the writers'
# mutex, byte _CLAIMS_START + length * _MAX_SAMPLES + sample claims one sample.
_CLAIMS_START = 1
_MAX_SAMPLES = 1 << 24


class TaskColumns(Protocol):
    """What rows of one task hold beyond the common columns, as a task class states it (tasks.base.Task)."""

    columns: ClassVar[dict[str, type]]  # its own columns and their types: ``str`` ones are read back as text
    timing_columns: ClassVar[tuple[str, ...]]  # of those, the measured ones

    @classmethod
    def writes_column(cls, column: str) -> bool:
        """Whether its rows may have ``column`` of their own."""


# task name -> what its rows hold: the task registry, ``tasks.TASKS``
Tasks = Mapping[str, type[TaskColumns]]


def timing_columns(tasks: Tasks) -> list[str]:
    """Every column that is measured rather than computed: the common ones and every task's."""
    measured = list(COMMON_TIMING_COLUMNS)
    for task in tasks.values():
        measured += [c for c in task.timing_columns if c not in measured]
    return measured


def text_columns(tasks: Tasks) -> dict[str, type]:
    """Columns read back as text: the common hashes and every task's ``str`` columns."""
    text = {column: str for column in COMMON_TEXT_COLUMNS}
    for task in tasks.values():
        text.update({column: str for column, kind in task.columns.items() if kind is str})
    return text


class ResultsFile:
    """The CSV of one job. Use as a context manager: it holds the file's lock while open.

    ``columns``: the header a new file gets and an existing one must have ([]: the file's own);
    ``tasks``: the task registry, for what the rows of each task may hold (see the module docstring)."""

    def __init__(self, path: Path, columns: list[str], *, tasks: Tasks):
        self.path = Path(path)
        self.columns = columns
        self.tasks = tasks
        self._fd: int | None = None
        self._lock_fd: int | None = None

    # -- reading --------------------------------------------------------------------------
    def read(self) -> pd.DataFrame:
        """The rows already written (an empty frame if none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=self.columns or COMMON_COLUMNS)
        try:
            text = self.path.read_text(encoding="utf-8")
            if not text.endswith("\n"):  # a torn last line (killed mid-write) is not a row; it is cut on the next write
                text = text[: text.rfind("\n") + 1]
            frame = pd.read_csv(io.StringIO(text), dtype=text_columns(self.tasks))
        except OSError as error:
            raise HarnessError(f"results file {self.path} cannot be read ({error.strerror or error})") from None
        except Exception as error:  # noqa: BLE001 - undecodable bytes or any parse failure mean the same to the user
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise _corrupted(self.path, reason) from None
        missing = [c for c in ("length", "sample", "status") if c not in frame.columns]
        if missing or (len(frame) and not frame["status"].isin(STATUSES).all()):
            raise _corrupted(self.path, "unexpected columns or status")
        widths = {len(fields) for fields in csv.reader(io.StringIO(text)) if fields}
        if widths != {len(frame.columns)}:  # pandas would take a first field the header lacks as the index
            raise _corrupted(self.path, "rows with other numbers of fields than the header")
        foreign = _foreign_columns(frame, self.tasks)
        if foreign:
            raise _corrupted(self.path, f"a column the harness does not write: {', '.join(foreign)}")
        for column, lowest in (("length", 0), ("sample", -1)):  # sample -1: a row about a whole length
            values = pd.to_numeric(frame[column], errors="coerce")
            if values.isna().any() or (values != values.round()).any() or (values < lowest).any():
                raise _corrupted(self.path, f"a {column} that is not a whole number")
            frame[column] = values.astype("int64")
        return latest_attempts(frame)

    def done(self, retry_failed: bool = False) -> set[tuple[int, int]]:
        """(length, sample) pairs that already have a row, whatever their status; with
        ``retry_failed``, only those whose (newest) row is ``ok``: a failed one is to be computed again."""
        frame = self.read()
        if retry_failed:
            frame = frame[frame["status"] == "ok"]
        return {(int(a), int(b)) for a, b in zip(frame["length"], frame["sample"])}

    # -- writing --------------------------------------------------------------------------
    def __enter__(self) -> ResultsFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o644)
            self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o644)
        except OSError as error:
            self.close()
            raise _not_writable(self.path.parent, error) from None
        with self._write_lock():
            self._cut_torn_line()
            if os.fstat(self._fd).st_size == 0:
                self._write_lines([self.columns])
                header = self.columns
            else:
                header = next(csv.reader([self.path.open().readline()]))
        if not self.columns:  # opened only to claim or append in the file's own layout
            self.columns = header
        elif header == [c for c in self.columns if c not in LATER_COLUMNS]:  # written before those columns existed
            self.columns = header
        elif header != self.columns:
            self.close()
            raise HarnessError(f"results file {self.path} has other columns than this task writes; move it away")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock file releases every claim this process holds on it
        self._fd = self._lock_fd = None

    @contextmanager
    def claim(self, length: int, sample: int | None, retry_failed: bool = False) -> Iterator[str]:
        """Yields what this process may do with (length, sample): "mine" (compute it: nobody else is
        and it has no row yet), "busy" (another live process holds it) or "skipped" (it has a row).
        A "mine" claim is held until the block ends (or the process dies). ``sample`` None claims the
        whole length (a ``whole_length`` task's unit), "skipped" once the file has any row of it.
        ``retry_failed``: a sample whose row failed is "mine" too, until some process's retry is ok."""
        offset = _CLAIMS_START + length * _MAX_SAMPLES + (sample or 0)
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:  # another process holds it
            yield "busy"
            return
        try:
            done = self.done(retry_failed)
            has_row = any(key[0] == length for key in done) if sample is None else (length, sample) in done
            yield "skipped" if has_row else "mine"
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, offset)

    def append(self, row: dict) -> None:
        self.append_all([row])

    def append_all(self, rows: list[dict]) -> None:
        """Append rows with one write (and one fsync) under the write lock: a whole length's rows."""
        later = [c for c in LATER_COLUMNS if c not in self.columns]
        rows = [{k: v for k, v in row.items() if not (k in later and v is None)} for row in rows]
        unknown = set().union(*rows) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns the file does not: {sorted(unknown)}")
        with self._write_lock():
            self._cut_torn_line()
            self._write_lines([["" if row.get(c) is None else row.get(c) for c in self.columns] for row in rows])

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, 1, 0)  # byte 0: the writers' mutex (blocking, held briefly)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, 0)

    def _write_lines(self, lines: list[list]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        data = buffer.getvalue().encode()
        size = os.fstat(self._fd).st_size
        try:
            written = 0
            while written < len(data):  # a write may be short (e.g. the disk fills up mid-line)
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as error:
            try:
                os.ftruncate(self._fd, size)  # roll back to the last whole row
            except OSError:
                pass  # a torn line that is left is cut before the next write and ignored by readers
            raise HarnessError(f"could not write a row to {self.path} ({error.strerror}); rows already written "
                               f"are kept: fix that and rerun the same command to go on") from None

    def _cut_torn_line(self) -> None:
        """A writer killed mid-line leaves a partial last line: cut it so the next row starts on a line
        of its own (callers hold the write lock, so no live writer is mid-line)."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        tail = os.pread(self._fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        cut = tail.rfind(b"\n")
        os.ftruncate(self._fd, size - len(tail) + cut + 1 if cut >= 0 else 0)


def check_writable(folder: Path) -> None:
    """One-line error if rows cannot be written under ``folder`` (the runner checks this before loading a model).

    Creates nothing: it writes (and removes) a probe file in the nearest folder that exists, so a
    job refused later for bad input leaves no empty folders behind."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        probe = existing / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _not_writable(folder, error) from None


def _foreign_columns(frame: pd.DataFrame, tasks: Tasks) -> list[str]:
    """Columns that are neither common ones nor those of the file's task (a task without a class in
    this checkout, e.g. from another branch, is not judged)."""
    if "task" not in frame.columns or frame.empty:
        return []
    classes = [tasks.get(name) for name in frame["task"].dropna().unique()]
    if not classes or None in classes:
        return []
    return [column for column in frame.columns
            if column not in COMMON_COLUMNS and not any(cls.writes_column(column) for cls in classes)]


def _corrupted(path: Path, reason: str) -> HarnessError:
    return HarnessError(f"results file {path} is corrupted ({reason}); move it away and rerun")


def _not_writable(folder: Path, error: OSError) -> HarnessError:
    return HarnessError(f"results directory {folder} is not writable ({error.strerror}); "
                        f"set results_dir= to a writable folder")


def comparable(frame: pd.DataFrame, *, tasks: Tasks) -> pd.DataFrame:
    """The rows without their timing columns, in a canonical order: two runs of one sweep give equal frames.
    A score that is itself a measurement (a task whose metric is one of its timing columns) is blanked."""
    measured = timing_columns(tasks)
    frame = frame.drop(columns=[c for c in measured if c in frame.columns])
    if "metric" in frame.columns:
        frame = frame.assign(score=frame["score"].where(~frame["metric"].isin(measured)))
    return frame.sort_values(ROW_KEY).reset_index(drop=True)


def latest_attempts(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without the failed attempts that a later one replaced (``retry_failed=true``): a
    failed row is dropped when a later row (in file order) has its (length, sample) or, for a failed
    whole length (sample -1), its length, within the same job (model, method, task, config_hash).
    The harness never writes a row after an ``ok`` one of the same sample, so what is left is one
    row per sample: the newest."""
    if frame.empty or "status" not in frame.columns:
        return frame
    job = [frame[c] for c in ("model", "method", "task", "config_hash") if c in frame.columns]
    order = pd.Series(np.arange(len(frame)), index=frame.index)
    last_of_sample = order.groupby([*job, frame["length"], frame["sample"]], dropna=False).transform("max")
    last_of_length = order.groupby([*job, frame["length"]], dropna=False).transform("max")
    replaced = (frame["status"] != "ok") & ((order < last_of_sample)
                                            | ((frame["sample"] == -1) & (order < last_of_length)))
    return frame[~replaced].reset_index(drop=True) if replaced.any() else frame


def read_rows(path: Path, *, tasks: Tasks) -> pd.DataFrame:
    """Every row under a results directory (its ``runs/**/*.csv``), or of one collected CSV
    (``tasks``: the task registry, see :class:`ResultsFile`)."""
    path = Path(path)
    if path.is_file():
        if path.stat().st_size == 0:
            raise HarnessError(f"{path} is empty: no rows (collect them with python -m harness.collect)")
        try:
            frame = pd.read_csv(path, dtype=text_columns(tasks))
        except Exception as error:  # noqa: BLE001 - undecodable bytes or any parse failure mean the same to the user
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HarnessError(f"{path} is not a results table ({reason})") from None
        missing = [c for c in ("model", "method", "task", "length", "sample", "status") if c not in frame.columns]
        if missing:
            raise HarnessError(f"{path} is not a results table (no {', '.join(missing)} column)")
        return latest_attempts(frame)
    if not (path / "runs").is_dir():
        raise HarnessError(f"{path} is neither a collected CSV nor a results directory with runs/ "
                           "(run python -m harness first, or give --results)")
    frames = [ResultsFile(f, [], tasks=tasks).read() for f in sorted(path.glob("runs/**/*.csv"))]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMMON_COLUMNS)


def collect(root: Path, out: Path, *, tasks: Tasks) -> pd.DataFrame:
    """Concatenate every job's CSV under ``root`` into one CSV at ``out`` (written atomically)."""
    table = read_rows(root, tasks=tasks)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return table

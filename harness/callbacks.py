"""Hydra callback: a multirun's final summary and exit status (how many cells failed).

Hydra calls ``on_job_end`` in whichever process runs the job. With the default launcher that is
this process; with a launcher plugin (joblib, submitit) it is a worker holding a pickled copy of
this callback, so the worker hands its job's record to the parent as one JSON file in the sweep
directory (``<sweep dir>/.harness-jobs/<sweep id>/<job num>.json``), and ``on_multirun_end`` reads
them back (and removes them). The sweep id keeps a rerun into the same sweep directory from
counting another sweep's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self._parent_pid: int | None = None
        self._inbox: Path | None = None

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._parent_pid = os.getpid()
        self._inbox = Path(str(config.hydra.sweep.dir)).absolute() / ".harness-jobs" / uuid.uuid4().hex[:12]

    def on_job_start(self, config, **kwargs: Any) -> None:
        if self._parent_pid is not None and os.getpid() != self._parent_pid:
            # a launcher's worker process never ran harness.cli.main(), which quiets transformers
            import transformers

            transformers.logging.set_verbosity_error()

    def on_job_end(self, config, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            record = dict(job_return.return_value or {})
        else:
            record = {"job": " ".join(job_return.overrides or []), "crashed": str(job_return._return_value)}
        if self._inbox is None or os.getpid() == self._parent_pid:
            self.jobs.append(record)
            return
        self._inbox.mkdir(parents=True, exist_ok=True)
        path = self._inbox / f"{config.hydra.job.num}.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, default=str))
        tmp.replace(path)

    def _worker_records(self) -> list[dict]:
        if self._inbox is None or not self._inbox.is_dir():
            return []
        files = sorted(self._inbox.glob("*.json"), key=lambda f: int(f.stem) if f.stem.isdigit() else -1)
        records = [json.loads(f.read_text()) for f in files]
        shutil.rmtree(self._inbox, ignore_errors=True)  # read once; the parent folder goes if it is empty
        with contextlib.suppress(OSError):
            self._inbox.parent.rmdir()
        return records

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        jobs = self.jobs + self._worker_records()
        if jobs and all("planned" in j or "invalid" in j for j in jobs):  # plan=true: nothing ran
            todo, done = sum(j.get("planned", 0) for j in jobs), sum(j.get("done", 0) for j in jobs)
            tokens = sum(j.get("tokens", 0) for j in jobs)
            print(f"\nplan: {len(jobs)} jobs, {todo} samples to run ({done} already done), {tokens:,} tokens; nothing was run")
            invalid = [j for j in jobs if "invalid" in j]
            for j in invalid:
                print(f"  invalid: {j['job']}: {j['invalid']}")
            if invalid:
                sys.exit(1)
            return
        bad = [j for j in jobs if "invalid" in j or "crashed" in j]
        failed = sum(j.get("oom", 0) + j.get("error", 0) for j in jobs)
        ok = sum(j.get("ok", 0) for j in jobs)
        print(f"\nsweep: {len(jobs)} jobs, {ok} new ok rows, {failed} failed samples, {len(bad)} jobs not run")
        for j in bad:
            print(f"  not run: {j['job']}: {j.get('invalid') or j.get('crashed')}")
        if bad or failed:
            sys.exit(1)

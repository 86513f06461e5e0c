"""Hydra callback: a multirun's final summary and exit status (how many cells failed).

Hydra calls ``on_job_end`` in whichever process runs the job. With the default launcher that is
this process; with a launcher plugin (joblib, submitit) it is a worker holding a pickled copy of
this callback, so the worker hands its job's record to the parent as one JSON file in the sweep
directory (``<sweep dir>/.harness-jobs/<sweep id>/<job num>.json``), and ``on_multirun_end`` reads
them back (and removes them). The sweep id keeps a rerun into the same sweep directory from
counting another sweep's records.

Exit status: 2 when no job could run because every one was refused as bad input (or, with
``plan=true``, when any was), 1 when any job was refused or crashed or any sample failed, else 0.
A sweep that computed nothing (``plan=true``, or every job refused) removes the sweep folder it
created (Hydra's ``multirun.yaml``), so it leaves no files behind.
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
from omegaconf import OmegaConf

# Set when Hydra has composed a run's or a sweep's config and starts it (in the process that called
# Hydra): an exit status 1 from Hydra before that is its refusal of the command line (an override it
# cannot parse or merge, a config that does not exist), which harness.cli reports as bad input (2).
started = False


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self._parent_pid: int | None = None
        self._inbox: Path | None = None
        self._created: list[Path] = []  # the sweep folder and its parents that did not exist before this sweep

    def on_run_start(self, config, **kwargs: Any) -> None:
        global started
        started = True

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        global started
        started = True
        self._parent_pid = os.getpid()
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self._inbox = sweep_dir / ".harness-jobs" / uuid.uuid4().hex[:12]
        self._created = []
        folder = sweep_dir
        while not folder.exists() and folder != folder.parent:  # Hydra creates them after this call
            self._created.append(folder)
            folder = folder.parent

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

    def _remove_sweep_dir(self) -> None:
        """Remove what this sweep created, if it holds nothing but Hydra's multirun.yaml."""
        if not self._created:
            return
        with contextlib.suppress(OSError):
            (self._created[0] / "multirun.yaml").unlink()
        for folder in self._created:  # deepest first; a folder with anything else in it stays
            try:
                folder.rmdir()
            except OSError:
                return

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        jobs = self.jobs + self._worker_records()
        invalid = [j for j in jobs if "invalid" in j]
        crashed = [j for j in jobs if "crashed" in j]
        if OmegaConf.select(config, "plan", default=False):  # plan=true: nothing ran
            todo, done = sum(j.get("planned", 0) for j in jobs), sum(j.get("done", 0) for j in jobs)
            tokens = sum(j.get("tokens", 0) for j in jobs)
            print(f"\nplan: {len(jobs)} jobs, {todo} samples to run ({done} already done), {tokens:,} tokens; "
                  "nothing was run")
            for j in invalid + crashed:
                print(f"  invalid: {j['job']}: {j.get('invalid') or j.get('crashed')}")
            self._remove_sweep_dir()
            if invalid or crashed:
                sys.exit(2 if invalid and not crashed else 1)
            return
        bad = invalid + crashed
        failed = sum(j.get("oom", 0) + j.get("error", 0) for j in jobs)
        ok = sum(j.get("ok", 0) for j in jobs)
        print(f"\nsweep: {len(jobs)} jobs, {ok} new ok rows, {failed} failed samples, {len(bad)} jobs not run")
        for j in bad:
            print(f"  not run: {j['job']}: {j.get('invalid') or j.get('crashed')}")
        if jobs and len(invalid) == len(jobs):  # bad input everywhere: nothing ran, nothing is left behind
            self._remove_sweep_dir()
            sys.exit(2)
        if bad or failed:
            sys.exit(1)

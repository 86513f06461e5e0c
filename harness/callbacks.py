"""Hydra callback: a multirun's final summary and exit status (how many cells failed)."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[dict] = []

    def on_job_end(self, config, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            self.jobs.append(job_return.return_value or {})
        else:
            self.jobs.append({"job": " ".join(job_return.overrides or []), "crashed": str(job_return._return_value)})

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        bad = [j for j in self.jobs if "invalid" in j or "crashed" in j]
        failed = sum(j.get("oom", 0) + j.get("error", 0) for j in self.jobs)
        ok = sum(j.get("ok", 0) for j in self.jobs)
        print(f"\nsweep: {len(self.jobs)} jobs, {ok} new ok rows, {failed} failed samples, {len(bad)} jobs not run")
        for j in bad:
            print(f"  not run: {j['job']}: {j.get('invalid') or j.get('crashed')}")
        if bad or failed:
            sys.exit(1)

"""What a run prints at the end: where the rows went and a short table of the lengths it asked for."""

from __future__ import annotations

from harness.results import ResultsFile
from tasks import TASKS, task_by_name


def print_job_summary(summary) -> None:
    counts = summary.counts
    busy = f"; left to another running job: {counts['busy']}" if counts.get("busy") else ""
    print(f"rows: {summary.path}  (new: {counts['ok']} ok, {counts['oom']} oom, {counts['error']} error; "
          f"already there: {counts['skipped']}{busy})")
    kept = getattr(summary, "failed_kept", 0)
    if kept:  # rows that failed in an earlier run: skipped like the others unless asked
        print(f"{kept} of the rows already there failed (error/oom; their message column says why): "
              f"rerun with retry_failed=true to compute them again")
    frame = ResultsFile(summary.path, [], tasks=TASKS).read()
    if summary.lengths:  # only what this command asked for; the file may hold other lengths and samples
        frame = frame[frame["length"].isin(summary.lengths)]
        if summary.samples:  # 0: a task that evaluates whole lengths (it decides its samples)
            frame = frame[frame["sample"] < summary.samples]
    cls = task_by_name(summary.task)
    own = cls.summary_table(frame) if cls is not None and len(frame) else None
    if own is not None:
        print(own.to_string())
    elif len(frame):
        table = frame.groupby("length").agg(
            samples=("sample", "count"), score=("score", "mean"), failed=("status", lambda s: int((s != "ok").sum())),
            seconds=("seconds", "mean"),
        )
        metric = frame["metric"].iloc[0]
        print(table.rename(columns={"score": f"mean {metric}"}).round(4).to_string())

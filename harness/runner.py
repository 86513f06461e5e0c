"""One job: a (model, method, task) cell over the task's lengths and samples, resumable.

The runner owns everything around the task: deciding what is left to do (from the job's results
file), loading the model only if something is, checking every length before spending compute,
timing, catching out-of-memory and other failures per sample, and writing one row per sample.
A task that evaluates every sample of a length at once (``Task.whole_length``, e.g. an external
evaluator over its own documents) is driven per length instead: the unit claimed, timed, caught
and skipped on a rerun is the length, and its rows are appended together.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import REPO_ROOT
from harness.constants import DEFAULT_ATTN_IMPLEMENTATION
from harness.errors import HarnessError
from harness.identity import input_hash
from harness.job import check_job, check_label, results_path, task_class_from_config
from harness.results import COMMON_COLUMNS, ResultsFile, check_writable
from tasks import TASKS

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    path: Path
    lengths: list[int] = field(default_factory=list)  # what this run asked for (the summary table shows these)
    samples: int = 0  # 0 for a task that evaluates whole lengths (it decides its samples)
    task: str = ""
    # skipped: rows already written; busy: samples another process was computing (left to it)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "oom": 0, "error": 0, "skipped": 0, "busy": 0})
    # of the skipped ones, how many are failed rows left as they are (retry_failed=true computes them)
    failed_kept: int = 0

    @property
    def failed(self) -> int:
        return self.counts["oom"] + self.counts["error"]


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> str:
    import transformers

    return json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}, sort_keys=True)


# How allocation failures read: CUDA's "out of memory", and the CPU allocator's "DefaultCPUAllocator:
# can't allocate memory: you tried to allocate ... bytes" (a RuntimeError, not a MemoryError).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_oom(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(m in message for m in _OOM_MESSAGES)


def run_job(cfg: DictConfig) -> JobSummary:
    """Run whatever of this job is not in its results file yet."""
    lengths, samples = check_job(cfg)
    path, digest = results_path(cfg)
    retry = bool(cfg.get("retry_failed", False))
    summary = JobSummary(path, lengths, samples, cfg.task.name)
    whole_length = task_class_from_config(cfg.task).whole_length
    existing = ResultsFile(path, [], tasks=TASKS).read()  # the newest attempt of each sample (results.latest_attempts)
    asked = existing[existing["length"].isin(lengths)]
    if samples:  # the file may hold more samples than this command asks for
        asked = asked[asked["sample"] < samples]
    failed = asked[asked["status"] != "ok"]
    kept = existing[existing["status"] == "ok"] if retry else existing  # rows that need no computing
    done = {(int(a), int(b)) for a, b in zip(kept["length"], kept["sample"])}
    if whole_length:  # one unit per length (index None): done once the file has any row of it
        todo = [(length, None) for length in lengths if length not in {a for a, _ in done}]
        summary.counts["skipped"] = int((kept["length"].isin(lengths)).sum())  # rows of the lengths done
    else:
        todo = [(length, index) for length in lengths for index in range(samples) if (length, index) not in done]
        summary.counts["skipped"] = len(lengths) * samples - len(todo)
    summary.failed_kept = 0 if retry else len(failed)
    if not todo:  # the run summary says how many of these rows failed, and how to retry them
        log.info("nothing to do: all %d rows are in %s", summary.counts["skipped"], path)
        return summary
    check_writable(path.parent)  # before loading anything (creates nothing); a finished job needs no writing

    from harness.methods import apply_method, method_from_config, method_settings  # imported only once there is work
    from harness.models import load_model

    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    method_name, params = method_settings(cfg.method)  # as configured (train_length null: the model's)
    model = apply_method(loaded.model, method_from_config(cfg.method, loaded.train_length))
    task_params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    task_params["lengths"] = lengths
    try:
        task = instantiate(task_params, tokenizer=loaded.tokenizer, prompt_template=loaded.prompt_template,
                           seed=cfg.seed, train_length=loaded.train_length, vocab_size=model.config.vocab_size,
                           _convert_="all")
    except InstantiationException as error:  # Hydra wraps the task's own one-line error
        cause = error.__cause__
        if isinstance(cause, (HarnessError, ValueError)):
            raise HarnessError(f"task {cfg.task.name!r}: {cause}") from None
        raise
    results = ResultsFile(path, COMMON_COLUMNS + list(task.columns), tasks=TASKS)
    if task.needs_tokenizer and loaded.tokenizer is None:
        raise HarnessError(f"task {cfg.task.name!r} needs a tokenizer and model {loaded.name!r} has none")
    task.check_model(model)  # e.g. a layer the model does not have: one line, before any compute
    for length in sorted({length for length, _ in todo} if not whole_length else ()):  # checked before any compute
        try:
            task.build_input(length, 0)
        except ValueError as error:
            raise HarnessError(f"task {cfg.task.name!r} cannot build length {length}: {error}") from None

    provenance = dict(model=loaded.name, method=method_name, task=cfg.task.name, metric=task.metric, seed=cfg.seed,
                      device=str(cfg.device), dtype=cfg.dtype,
                      attn_implementation=cfg.model.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION,
                      method_params=json.dumps(params, sort_keys=True), label=check_label(cfg.get("label")),
                      config_hash=digest, git_rev=_git_rev(), versions=_versions())
    with results:
        _write_config_once(path.with_suffix(".yaml"), cfg)
        # closed on any way out (Ctrl-C too), so what is printed next starts on a line of its own
        with tqdm(todo, desc=f"{loaded.name}/{method_name}/{cfg.task.name}", dynamic_ncols=True,
                  unit="length" if whole_length else "sample") as bar:
            for length, index in bar:
                bar.set_postfix(length=length)
                with results.claim(length, index, retry_failed=retry) as state:
                    if state != "mine":
                        summary.counts[state] += 1  # another process computes it / wrote it since this job started
                    elif whole_length:
                        for status in _run_length(cfg, task, model, results, provenance, length):
                            summary.counts[status] += 1
                    else:
                        summary.counts[_run_sample(cfg, task, model, results, provenance, length, index)] += 1
    return summary


def _run_sample(cfg, task, model, results: ResultsFile, provenance: dict, length: int, index: int) -> str:
    """Compute one sample and write its row; returns the row's status."""
    task_input = task.build_input(length, index)
    row = dict(provenance, length=length, sample=index, tokens=task_input.tokens,
               input_hash=input_hash(task_input.input_ids), **task_input.info)
    started = time.perf_counter()
    try:
        row.update(task.evaluate(model, task_input), status="ok")
    except Exception as error:  # noqa: BLE001 - a failing sample is recorded, the sweep goes on
        row.update(_failure(error))
        _report_failure(f"{provenance['method']}/{cfg.task.name} length {length} sample {index}", row)
    row.update(_timing(started))
    results.append(row)
    return row["status"]


def _run_length(cfg, task, model, results: ResultsFile, provenance: dict, length: int) -> list[str]:
    """Compute every sample of one length at once (a ``whole_length`` task) and append its rows
    together; returns their statuses. Every row gets the whole length's ``seconds``."""
    started = time.perf_counter()
    try:
        rows = [{**provenance, "length": length, "status": "ok", **row} for row in task.evaluate_length(model, length)]
        if not rows:
            raise ValueError("the task returned no rows for this length")
    except Exception as error:  # noqa: BLE001 - a failing length is recorded, the sweep goes on
        rows = [dict(provenance, length=length, sample=-1, **_failure(error))]
        _report_failure(f"{provenance['method']}/{cfg.task.name} length {length}", rows[0])
    timing = _timing(started)
    results.append_all([dict(row, **timing) for row in rows])
    return [row["status"] for row in rows]


def _failure(error: Exception) -> dict:
    """The status and one-line message of a failed sample or length."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    return {"status": "oom" if _is_oom(error) else "error", "message": message}


def _report_failure(what: str, row: dict) -> None:
    """One console line per failed sample or length, with why (the row's message), above the progress bar."""
    tqdm.write(f"{what}: {row['status']}: {row['message']}")


def _timing(started: float) -> dict:
    return {"seconds": round(time.perf_counter() - started, 3),
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _write_config_once(path: Path, cfg: DictConfig) -> None:
    if not path.exists():
        tmp = path.with_suffix(f".yaml.{os.getpid()}.tmp")  # per process: jobs sharing a file may race here
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tmp.replace(path)

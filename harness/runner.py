"""One job: a (model, method, task) cell over the task's lengths and samples, resumable.

The runner owns everything around the task: deciding what is left to do (from the job's results
file), loading the model only if something is, checking every length before spending compute,
timing, catching out-of-memory and other failures per sample, and writing one row per sample.
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
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from harness import REPO_ROOT
from harness.devices import check_device
from harness.errors import HarnessError
from harness.results import COMMON_COLUMNS, ResultsFile, check_writable, config_hash, input_hash

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    path: Path
    lengths: list[int] = field(default_factory=list)  # what this run asked for (the summary table shows these)
    samples: int = 0
    # skipped: rows already written; busy: samples another process was computing (left to it)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "oom": 0, "error": 0, "skipped": 0, "busy": 0})

    @property
    def failed(self) -> int:
        return self.counts["oom"] + self.counts["error"]


def method_settings(method_cfg: DictConfig) -> tuple[str, dict]:
    """(name, parameters) for ``apply_method`` from a ``conf/method`` node."""
    params = OmegaConf.to_container(method_cfg, resolve=True)
    return params.pop("name"), params


DTYPES = ("float32", "float16", "bfloat16")


def check_lengths(lengths) -> list[int]:
    """The task's lengths as a list of positive integers (a single integer is one length); duplicates dropped."""
    if isinstance(lengths, (ListConfig, DictConfig)):
        lengths = OmegaConf.to_container(lengths, resolve=True)
    if not isinstance(lengths, (list, tuple)):
        lengths = [lengths]  # task.lengths=512 means [512]
    if not lengths:
        raise HarnessError("task.lengths is empty: give at least one length, e.g. task.lengths=[1024,2048]")
    out = []
    for value in lengths:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise HarnessError(f"task.lengths must be positive integers, got {value!r}; e.g. task.lengths=[1024,2048]")
        if value not in out:
            out.append(value)
    return out


def check_job(cfg: DictConfig) -> tuple[list[int], int]:
    """Everything about a job that can be checked without loading anything: (lengths, samples).

    ``run_job`` and ``plan_job`` both start here, so bad input is one line before any work."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HarnessError(f"seed must be an integer, got {seed!r}")
    if cfg.get("dtype") not in DTYPES:
        raise HarnessError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.get('dtype')!r}")
    check_device(cfg.device)
    lengths = check_lengths(cfg.task.get("lengths"))
    samples = cfg.task.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise HarnessError(f"task.samples must be a positive integer, got {samples!r}")
    return lengths, samples


def original_cwd() -> Path:
    """Where the command was started: Hydra's original working directory, else the current one."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def results_root(cfg: DictConfig) -> Path:
    """``results_dir`` as an absolute path; a relative one is relative to where the command was started."""
    root = Path(str(cfg.results_dir)).expanduser()
    return (root if root.is_absolute() else original_cwd() / root).absolute()


def results_path(cfg: DictConfig) -> tuple[Path, str]:
    """Where this job's rows go. The hash covers everything that changes a row's numbers, except
    the lengths and sample counts, so extending a sweep appends to the same file."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    task.pop("lengths", None)
    task.pop("samples", None)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for where in ("local_path", "device_map", "max_memory"):  # where weights live does not change the numbers
        model.pop(where, None)
    model.pop("decode_sdpa_backends", None)  # which fused kernel runs a decoding step: speed only
    if model.get("attn_implementation", "sdpa") == "sdpa":
        # the default, and what every row before this key existed used: their files stay resumable
        model.pop("attn_implementation", None)
    payload = dict(model=model, method=OmegaConf.to_container(cfg.method, resolve=True), task=task,
                   seed=cfg.seed, device=str(cfg.device), dtype=cfg.dtype)
    digest = config_hash(payload)
    return results_root(cfg) / "runs" / cfg.task.name / cfg.model.name / f"{cfg.method.name}-{digest}.csv", digest


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> str:
    import transformers

    return json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}, sort_keys=True)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


def run_job(cfg: DictConfig) -> JobSummary:
    """Run whatever of this job is not in its results file yet."""
    lengths, samples = check_job(cfg)
    path, digest = results_path(cfg)
    check_writable(path.parent)  # before loading anything (creates nothing)
    summary = JobSummary(path, lengths, samples)
    done = ResultsFile(path, []).done()
    todo = [(length, index) for length in lengths for index in range(samples) if (length, index) not in done]
    summary.counts["skipped"] = len(lengths) * samples - len(todo)
    if not todo:
        log.info("nothing to do: all %d rows are in %s", summary.counts["skipped"], path)
        return summary

    from harness.methods import apply_method  # imported only once there is work (bad input is refused faster)
    from harness.models import load_model

    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    method_name, params = method_settings(cfg.method)
    model = apply_method(loaded.model, method_name, **params)
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
    results = ResultsFile(path, COMMON_COLUMNS + list(task.columns))
    if task.needs_tokenizer and loaded.tokenizer is None:
        raise HarnessError(f"task {cfg.task.name!r} needs a tokenizer and model {loaded.name!r} has none")
    for length in sorted({length for length, _ in todo}):  # every length is checked before any compute
        try:
            task.build_input(length, 0)
        except ValueError as error:
            raise HarnessError(f"task {cfg.task.name!r} cannot build length {length}: {error}") from None

    provenance = dict(model=loaded.name, method=method_name, task=cfg.task.name, metric=task.metric, seed=cfg.seed,
                      device=str(cfg.device), dtype=cfg.dtype,
                      attn_implementation=cfg.model.get("attn_implementation") or "sdpa", method_params=json.dumps(params, sort_keys=True),
                      config_hash=digest, git_rev=_git_rev(), versions=_versions())
    with results:
        _write_config_once(path.with_suffix(".yaml"), cfg)
        bar = tqdm(todo, desc=f"{loaded.name}/{method_name}/{cfg.task.name}", unit="sample", dynamic_ncols=True)
        for length, index in bar:
            bar.set_postfix(length=length)
            with results.claim(length, index) as state:
                if state == "mine":
                    state = _run_sample(cfg, task, model, results, provenance, length, index)
                summary.counts[state] += 1  # or: another process computes it / wrote it since this job started
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
        row.update(status="oom" if _is_oom(error) else "error", message=str(error).splitlines()[0][:300] if str(error) else type(error).__name__)
        log.warning("%s/%s length %d sample %d: %s", provenance["method"], cfg.task.name, length, index, row["status"])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row.update(seconds=round(time.perf_counter() - started, 3),
               timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    results.append(row)
    return row["status"]


def _write_config_once(path: Path, cfg: DictConfig) -> None:
    if not path.exists():
        tmp = path.with_suffix(f".yaml.{os.getpid()}.tmp")  # per process: jobs sharing a file may race here
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tmp.replace(path)

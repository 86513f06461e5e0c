"""What identifies a job, a (model, method, task) cell: its checked settings and its results file
(named by the hash of its config, harness.identity). The runner and plan mode both start here, so
they can never disagree about which file a job's rows are in or which input they refuse.

Nothing here loads a model, a tokenizer or a corpus.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.constants import DEFAULT_ATTN_IMPLEMENTATION, DTYPES
from harness.devices import check_device, check_device_name
from harness.errors import HarnessError
from harness.identity import config_hash, original_cwd
from harness.validation import is_integer, require_integer


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
        if not is_integer(value, 1):
            raise HarnessError(f"task.lengths must be positive integers, got {value!r}; e.g. task.lengths=[1024,2048]")
        if value not in out:
            out.append(value)
    return out


def task_class_from_config(task_cfg: DictConfig) -> type:
    """The class a ``conf/task`` node builds (its ``_target_``), imported but not built. It is
    imported by that name, like a method's, so this module needs no import of ``tasks``."""
    from hydra.utils import get_class

    target = task_cfg.get("_target_")
    if not target:  # every conf/task file names its class; without one nothing could run the task
        raise HarnessError(f"task config {task_cfg.get('name')!r} has no _target_ (the class of the task)")
    return get_class(target)


def check_job(cfg: DictConfig, plan: bool = False) -> tuple[list[int], int]:
    """Everything about a job that can be checked without loading anything: (lengths, samples).

    ``run_job`` and ``plan_job`` both start here, so bad input is one line before any work. A task
    that evaluates whole lengths has no ``samples`` (0 here): it decides them itself. ``plan``: only
    the device's name is checked, not that this machine has it (a GPU sweep is planned anywhere)."""
    require_integer(cfg.get("seed"), "seed", minimum=None)
    if cfg.get("dtype") not in DTYPES:
        raise HarnessError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.get('dtype')!r}")
    check_device_name(cfg.device) if plan else check_device(cfg.device)
    check_results_dir(cfg.get("results_dir"))
    check_label(cfg.get("label"))
    if not isinstance(cfg.get("retry_failed", False), bool):
        raise HarnessError(f"retry_failed must be true or false, got {cfg.get('retry_failed')!r}")
    lengths = check_lengths(cfg.task.get("lengths"))
    cls = task_class_from_config(cfg.task)
    samples = 0
    if not cls.whole_length:
        samples = require_integer(cfg.task.get("samples"), "task.samples")
    cls.check_params(OmegaConf.to_container(cfg.task, resolve=True))
    return lengths, samples


def check_label(value) -> str | None:
    """``label`` as the text rows carry (None: no label). It names a series "<method> (<label>)",
    so it is one line of text without parentheses."""
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if not text or any(c in text for c in "()\n\r"):
        raise HarnessError(f"label must be a short name without parentheses, e.g. label=8k-settings; got {value!r}")
    return text


def check_results_dir(value) -> str:
    """``results_dir`` as a folder name: null used to write into ``./None/``, and an empty value
    into the current directory itself (or, for a sweep's folder, ``/multirun`` at the filesystem's root)."""
    if value is None or not isinstance(value, (str, Path)) or not str(value).strip():
        got = "null" if value is None else "an empty value" if isinstance(value, str) else repr(value)
        raise HarnessError(f"results_dir must be a folder, e.g. results_dir=results (the default); got {got}")
    return str(value)


def results_root(cfg: DictConfig) -> Path:
    """``results_dir`` as an absolute path; a relative one is relative to where the command was started."""
    root = Path(check_results_dir(cfg.get("results_dir"))).expanduser()
    return (root if root.is_absolute() else original_cwd() / root).absolute()


def results_path(cfg: DictConfig) -> tuple[Path, str]:
    """Where this job's rows go, and the config hash in the file's name. The hash covers everything
    that changes a row's numbers, except the lengths and sample counts, so extending a sweep
    appends to the same file."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    task.pop("lengths", None)
    task.pop("samples", None)
    for key, neutral in task_class_from_config(cfg.task).hash_neutral_defaults.items():
        if key in task and task[key] == neutral:
            del task[key]
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for where in ("local_path", "device_map", "max_memory"):  # where weights live does not change the numbers
        model.pop(where, None)
    model.pop("decode_sdpa_backends", None)  # which fused kernel runs a decoding step: speed only
    if model.get("attn_implementation", DEFAULT_ATTN_IMPLEMENTATION) == DEFAULT_ATTN_IMPLEMENTATION:
        # the default, and what every row before this key existed used: their files stay resumable
        model.pop("attn_implementation", None)
    from harness.methods import method_class_of  # imports torch: here, not when job is imported

    method = OmegaConf.to_container(cfg.method, resolve=True)
    # `_target_` (which class builds the method) came after the first committed rows and changes no
    # number; the name and parameters stay, so those rows' files stay resumable.
    method.pop("_target_", None)
    for key, neutral in method_class_of(cfg.method).hash_neutral_defaults.items():  # added later, at the default
        if key in method and method[key] == neutral:
            del method[key]
    payload = dict(model=model, method=method, task=task, seed=cfg.seed, device=str(cfg.device), dtype=cfg.dtype)
    label = check_label(cfg.get("label"))
    if label is not None:  # a labelled series has a file of its own; without one, files keep their names
        payload["label"] = label
    digest = config_hash(payload)
    return results_root(cfg) / "runs" / cfg.task.name / cfg.model.name / f"{cfg.method.name}-{digest}.csv", digest

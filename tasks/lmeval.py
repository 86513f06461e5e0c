"""Any lm-evaluation-harness task, run on the harness's model with the job's method applied.

lm-evaluation-harness (the ``lm_eval`` package; an optional extra: ``pip install -e '.[lm-eval]'``)
has a catalogue of long-context tasks (RULER, LongBench, SCROLLS, babilong, ...). This task hands
it the model the runner loaded, with the method already applied, through lm-eval's HF model class
(``HFLM(pretrained=<the model>, tokenizer=<its tokenizer>, batch_size=1)``; batch size 1 because
the weave methods refuse padded batches), and runs ``lm_eval.simple_evaluate`` on ``task.tasks``
with ``task.limit``, ``task.num_fewshot`` and any other of its arguments from ``task.options``.

How lm-eval's results become rows (one job = one (model, method) over ``task.lengths``):

* ``length``: each length L of ``task.lengths`` is one lm-eval run in which L is the context
  length. lm-eval's ``max_length`` is L (it cuts longer prompts from the left, as it does for any
  model), and the tasks get L as metadata ``max_seq_lengths: [L]``, which is how RULER takes the
  lengths it builds its inputs at. So for RULER ``length`` is RULER's sequence length; for a task
  without a length of its own (LongBench, SCROLLS, a local task) it is the stand-in: the context
  budget, and each row's ``tokens`` says how long the sample's prompt really was (more than
  ``length``: lm-eval cut it). A ``max_seq_lengths`` in ``task.metadata`` wins (babilong reads
  that key as a dataset name such as ``4k``).
* ``sample`` = lm-eval's ``doc_id``: one row per (lm-eval task, metric, document) for every
  numeric per-document metric lm-eval logs, with the document's ``target``, the model's
  ``response`` (lm-eval's filtered responses as JSON: [log-likelihood, is-greedy] per choice, or
  the generated text), ``tokens`` (its longest request, context and continuation, as lm-eval's
  HF model encodes it) and ``input_hash`` (of every request's token ids: equal across methods).
* ``sample`` -1: one row per (lm-eval task or group, metric) with lm-eval's aggregate score, its
  ``stderr`` and ``n_samples``; ``tokens`` is the longest prompt among its documents.
* ``metric`` is lm-eval's metric, with its filter unless that is ``none`` (``exact_match,strict-match``);
  ``lm_eval_task`` is lm-eval's task or group name. RULER names its metrics after lengths and
  fills every length but a document's own with -1: a metric named after another length than the
  row's is left out.

Length buckets (``length_buckets``, e.g. ``[[4096, 8192], [8192, null]]``, the paper's LongBench
table): each document goes to the bucket its size falls in (low inclusive, high exclusive, null
open), and each bucket is one lm-eval run over its documents only (lm-eval's ``samples``), at most
``limit`` of them per lm-eval task and bucket (the first by ``doc_id``); documents in no bucket are
not run. The size is the document's prompt tokens (``bucket_by: tokens``: its longest request, as
the row's ``tokens`` counts it, before lm-eval cuts it to the length) or a numeric field of the
document (``bucket_by: length`` is LongBench-E's word count, by which LongBench's own evaluation
buckets 0-4k / 4-8k / 8k+). To know the sizes, lm-eval first builds every request of every
document without the model (its answers stand in as empty). Every row gets a ``bucket`` column
("4096-8192", "8192+"); lm-eval is handed each task by its own name (a group's tasks, not the
group), so a group's own aggregate rows are not written, its tasks' are (one per bucket).

Resume: a length is one unit for the runner (``whole_length``): its rows are appended together
once lm-eval has finished, and a rerun skips every length that has rows, so a finished job loads
no model and computes nothing. A length whose lm-eval run fails is one ``error`` (or ``oom``) row
with sample -1.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import logging
import math
import numbers
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.identity import input_hash, original_cwd
from harness.validation import is_integer, require_integer
from tasks.base import Task

INSTALL = "task 'lm-eval' needs lm-evaluation-harness, an optional extra: pip install -e '.[lm-eval]'"
# simple_evaluate's and HFLM's arguments that task.options and task.model_args cannot set, and why.
OWN_ARGUMENTS = {
    "model": "the harness's model= and method= give it", "model_args": "use task.model_args", "tasks": "use task.tasks",
    "limit": "use task.limit", "samples": "use task.limit", "num_fewshot": "use task.num_fewshot",
    "task_manager": "use task.include_path", "metadata": "use task.metadata",
    "log_samples": "always true here (rows per document)", "device": "use the harness's device=",
    "batch_size": "always 1 here (the weave methods refuse padded batches)", "max_batch_size": "always 1 here",
    "use_cache": "lm-eval's response cache does not know the method",
}
OWN_MODEL_ARGUMENTS = {
    "pretrained": "the harness's loaded model", "tokenizer": "the model's own",
    "max_length": "the length (task.lengths)", "batch_size": "always 1 here", "max_batch_size": "always 1 here",
    "device": "use the harness's device=",
    "dtype": "use the harness's dtype=", "parallelize": "use model.device_map=auto", "backend": "always causal here",
}
# lm-eval's default seeds (simple_evaluate's defaults); the job's seed is added to each.
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
LENGTH_METADATA = "max_seq_lengths"  # the metadata key RULER reads its lengths from
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until tasks that set none
BUCKET_BY_TOKENS = "tokens"  # bucket_by: the prompt's tokens (else the name of a document field)


def lm_eval_package():
    """The ``lm_eval`` package (with its HF model class), or a one-line error saying how to install it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401 - needs transformers, accelerate: lm_eval[hf]
    except ImportError:
        raise HarnessError(INSTALL) from None
    return lm_eval


def _task_list(tasks):
    """task.tasks as a list: one name may be given alone (task.tasks=niah_single_1)."""
    if isinstance(tasks, str):
        return [tasks]
    return list(tasks) if isinstance(tasks, (list, tuple)) else tasks


def _is_yaml(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml"))


def _resolve(path: str) -> str:
    """A relative path is relative to where the command was started (like results_dir)."""
    resolved = Path(path).expanduser()
    return str(resolved if resolved.is_absolute() else (original_cwd() / resolved).absolute())


def _is_number(value) -> bool:
    """A finite real number (bools and numpy scalars included): what a score column can hold."""
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _other_length(metric: str, length: int) -> bool:
    """RULER's metrics are named after lengths; those of another length than the row's are placeholders (-1)."""
    return metric.isdigit() and int(metric) != length


def _metric_name(metric: str, filter_name: str) -> str:
    return metric if filter_name in ("none", "", None) else f"{metric},{filter_name}"


def _requests(arguments) -> list[list]:
    """A logged sample's requests as lists of arguments: lm-eval logs tuples (or, once serialised,
    {gen_args_i: {arg_j: ...}})."""
    if isinstance(arguments, dict):
        return [list(args.values()) if isinstance(args, dict) else list(args) for args in arguments.values()]
    return [list(args) if isinstance(args, (list, tuple)) else [args] for args in arguments]


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _request_ids(sample: dict, encode) -> list[list[int]]:
    """The token ids of a logged sample's requests (context and continuation joined), as lm-eval's model gets them."""
    return [encode("".join(a for a in args if isinstance(a, str))) for args in _requests(sample["arguments"])]


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high is not None else f"{low}+"


def check_buckets(buckets) -> list[tuple[int, int | None]] | None:
    """task.length_buckets as (low, high) pairs, sorted, or a one-line error: each [low, high] with
    0 <= low < high (high null: no upper end), no two overlapping."""
    if buckets is None:
        return None
    example = "e.g. task.length_buckets=[[4096,8192],[8192,null]]"
    pairs = []
    for bucket in buckets if isinstance(buckets, (list, tuple)) and buckets else [None]:
        if not (isinstance(bucket, (list, tuple)) and len(bucket) == 2 and is_integer(bucket[0], 0)
                and (bucket[1] is None or is_integer(bucket[1], bucket[0] + 1))):
            raise HarnessError(f"task.length_buckets must be null or a list of [low, high] sizes with "
                               f"0 <= low < high (high null: no end), got {buckets!r}; {example}")
        pairs.append((bucket[0], bucket[1]))
    pairs.sort()
    for (low, high), (next_low, _) in zip(pairs, pairs[1:]):
        if high is None or high > next_low:
            raise HarnessError(f"task.length_buckets overlap: {bucket_label(low, high)} and from {next_low}; "
                               f"a document belongs to one bucket; {example}")
    return pairs


def document_sizes(out: dict, encode, bucket_by: str) -> dict[str, dict[int, float]]:
    """{lm-eval task: {doc_id: size}} of a run's logged samples: prompt tokens, or a document field."""
    sizes: dict[str, dict[int, float]] = {}
    for name, samples in (out.get("samples") or {}).items():
        for sample in samples:
            if bucket_by == BUCKET_BY_TOKENS:
                size = max((len(ids) for ids in _request_ids(sample, encode)), default=0)
            else:
                size = (sample.get("doc") or {}).get(bucket_by)
                if not _is_number(size):
                    raise HarnessError(f"task.bucket_by={bucket_by}: a document of lm-eval task {name!r} has no "
                                       f"numeric field {bucket_by!r} (got {size!r}); use task.bucket_by=tokens")
            sizes.setdefault(name, {})[int(sample["doc_id"])] = size
    return sizes


def rows_from_results(out: dict, length: int, encode) -> list[dict]:
    """The rows of one lm-eval run (``simple_evaluate``'s result with logged samples) at ``length``;
    ``encode`` turns a request's text into the token ids lm-eval's model gets (``HFLM.tok_encode``)."""
    rows, longest = [], {}
    for name, samples in (out.get("samples") or {}).items():
        for sample in samples:
            ids = _request_ids(sample, encode)
            tokens = max((len(i) for i in ids), default=0)
            longest[name] = max(longest.get(name, 0), tokens)
            digest = input_hash([token for request in ids for token in [*request, -1]])
            for metric in sample.get("metrics", []):
                value = sample.get(metric)
                if not _is_number(value) or _other_length(metric, length):
                    continue  # e.g. a corpus metric's per-document (reference, prediction) pair
                rows.append(dict(lm_eval_task=name, metric=_metric_name(metric, sample.get("filter")),
                                 sample=int(sample["doc_id"]), score=float(value), tokens=tokens, input_hash=digest,
                                 target=_text(sample.get("target")), response=_text(sample.get("filtered_resps"))))
    subtasks = out.get("group_subtasks") or {}

    def longest_of(name: str) -> int | None:
        if name in longest:
            return longest[name]
        found = [t for t in (longest_of(child) for child in subtasks.get(name, [])) if t is not None]
        return max(found) if found else None

    n_samples = out.get("n-samples") or {}
    for name, result in (out.get("results") or {}).items():
        count = (n_samples.get(name) or {}).get("effective", result.get("sample_len"))
        for key, value in result.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or metric.endswith("_stderr") or not _is_number(value) or _other_length(metric, length):
                continue
            stderr = result.get(f"{metric}_stderr,{filter_name}")
            rows.append(dict(lm_eval_task=name, metric=_metric_name(metric, filter_name), sample=-1,
                             score=float(value), stderr=float(stderr) if _is_number(stderr) else None,
                             n_samples=count, tokens=longest_of(name)))
    return rows


class LmEvalTask(Task):
    """Runner adapter: each length is one ``lm_eval.simple_evaluate`` run; rows as in the module docstring."""

    name = "lm-eval"
    metric = "-"  # every row names its lm-eval metric; "-" only on the row of a length that failed
    whole_length = True
    heatmap = False  # its rows mix lm-eval tasks and metrics
    columns = {"lm_eval_task": str, "stderr": float, "n_samples": int, "target": str, "response": str}
    BUCKET_COLUMN = {"bucket": str}  # added to ``columns`` of a job with length_buckets
    # Options added after lm-eval rows existed: at these values a job keeps its results file.
    hash_neutral_defaults = {"length_buckets": None, "bucket_by": BUCKET_BY_TOKENS}

    @classmethod
    def writes_column(cls, column: str) -> bool:
        return super().writes_column(column) or column in cls.BUCKET_COLUMN

    # -- facts for plan mode -------------------------------------------------------------------
    @classmethod
    def samples_per_length(cls, params: dict) -> int:
        """task.limit documents of each named lm-eval task (0: all of them, not known before lm-eval loads them)."""
        limit = params.get("limit")
        tasks = _task_list(params.get("tasks") or [])
        buckets = params.get("length_buckets")
        return limit * len(tasks) * (len(buckets) if buckets else 1) if is_integer(limit) else 0

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        """At most: the max_gen_toks of task.options.gen_kwargs, else lm-eval's default (tasks may set fewer)."""
        gen_kwargs = (params.get("options") or {}).get("gen_kwargs") or {}
        if not isinstance(gen_kwargs, dict):  # lm-eval also takes "max_gen_toks=64,..." strings
            return DEFAULT_MAX_GEN_TOKS
        return int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))

    @classmethod
    def logits_positions(cls, params: dict) -> int:
        """lm-eval's HF model scores a log-likelihood request with every position's logits: up to the length."""
        lengths = params.get("lengths") or 1
        return max(lengths) if isinstance(lengths, list) else int(lengths)

    @classmethod
    def plan_notes(cls, params: dict) -> list[str]:
        limit = params.get("limit")
        documents = (f"up to task.limit={limit} documents" if limit is not None
                     else "every document (task.limit=null: not known before lm-eval loads them, so not counted here)")
        tasks = ", ".join(_task_list(params.get("tasks") or []))
        buckets = params.get("length_buckets")
        if buckets:
            by = params.get("bucket_by") or BUCKET_BY_TOKENS
            labels = ", ".join(bucket_label(*pair) for pair in check_buckets(buckets))
            return [f"each length is one lm-eval run per length bucket ({labels}, by {by}) over {documents} of each "
                    f"of {tasks} in that bucket (a group counts once; buckets with fewer documents run fewer); tokens "
                    f"and memory assume every prompt fills the length and generates {cls.generated_tokens(params)} "
                    f"tokens"]
        return [f"each length is one lm-eval run over {documents} of each of {tasks} (a group counts once); tokens "
                f"and memory assume every prompt fills the length and generates {cls.generated_tokens(params)} tokens"]

    @classmethod
    def check_params(cls, params: dict) -> None:
        """lm-eval is installed, and the settings are what simple_evaluate and HFLM take (one line otherwise)."""
        lm_eval = lm_eval_package()
        from lm_eval.models.huggingface import HFLM

        tasks = _task_list(params.get("tasks"))
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise HarnessError(f"task.tasks must be a list of lm-eval task names or YAML files, got {tasks!r}; "
                               f"e.g. task.tasks=[niah_single_1]")
        for spec in filter(_is_yaml, tasks):
            if not Path(_resolve(spec)).is_file():
                raise HarnessError(f"lm-eval task file {spec} does not exist (relative paths are relative to where "
                                   f"the command is started)")
        limit = params.get("limit")
        if limit is not None and not (is_integer(limit, 1) or (isinstance(limit, float) and 0 < limit < 1)):
            raise HarnessError(f"task.limit must be null, a positive integer (documents per lm-eval task) or a "
                               f"fraction in (0, 1), got {limit!r}")
        require_integer(params.get("num_fewshot"), "task.num_fewshot", minimum=0, nullable=True)
        check_buckets(params.get("length_buckets"))
        bucket_by = params.get("bucket_by", BUCKET_BY_TOKENS)
        if not isinstance(bucket_by, str) or not bucket_by:
            raise HarnessError(f"task.bucket_by must be 'tokens' or the name of a numeric document field (e.g. "
                               f"length, LongBench-E's word count), got {bucket_by!r}")
        include = params.get("include_path")
        for path in [include] if isinstance(include, str) else include or []:
            if not Path(_resolve(path)).is_dir():
                raise HarnessError(f"task.include_path {path} is not a folder (relative paths are relative to where "
                                   f"the command is started)")
        for key, accepted, own in (("options", inspect.signature(lm_eval.simple_evaluate).parameters, OWN_ARGUMENTS),
                                   ("model_args", inspect.signature(HFLM.__init__).parameters, OWN_MODEL_ARGUMENTS),
                                   ("metadata", None, {})):
            value = params.get(key) or {}
            if not isinstance(value, dict):
                raise HarnessError(f"task.{key} must be a mapping, got {value!r}")
            for name in value:
                if name in own:
                    raise HarnessError(f"task.{key}.{name} cannot be set here: {own[name]}")
                if accepted is not None and (name not in accepted or name == "self" or
                                             accepted[name].kind is inspect.Parameter.VAR_KEYWORD):
                    raise HarnessError(
                        f"task.{key}.{name} is not an argument of lm-eval's "
                        f"{'simple_evaluate' if key == 'options' else 'HFLM'}; accepted: "
                        f"{', '.join(n for n in accepted if n not in own and n not in ('self', 'kwargs'))}")

    # -- the run ---------------------------------------------------------------------------------
    def __init__(self, *args, tasks=(), limit=None, num_fewshot=None, include_path=None, include_defaults: bool = True,
                 metadata=None, model_args=None, options=None, length_buckets=None, bucket_by: str = BUCKET_BY_TOKENS,
                 **kwargs):
        super().__init__(*args, **kwargs)
        tasks = _task_list(tasks)
        params = dict(tasks=tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path,
                      metadata=metadata, model_args=model_args, options=options, length_buckets=length_buckets,
                      bucket_by=bucket_by)
        self.check_params(params)
        self.buckets, self.bucket_by = check_buckets(length_buckets), bucket_by
        if self.buckets:
            self.columns = {**LmEvalTask.columns, **self.BUCKET_COLUMN}
        self.tasks = [_resolve(t) if _is_yaml(t) else t for t in tasks]
        self.limit, self.num_fewshot = limit, num_fewshot
        include = [include_path] if isinstance(include_path, str) else list(include_path or [])
        self.include_path = [_resolve(p) for p in include] or None
        self.include_defaults = bool(include_defaults)
        self.metadata, self.model_args, self.options = dict(metadata or {}), dict(model_args or {}), dict(options or {})
        # lm-eval's HF model needs transformers' tokenizer API; the random models' byte tokenizer converts itself.
        tokenizer = self.tokenizer
        self.hf_tokenizer = tokenizer.to_transformers() if hasattr(tokenizer, "to_transformers") else tokenizer
        self._managers: dict[str, Any] = {}
        self._check_names(self._manager(self.lengths[0]))

    def _metadata(self, length: int) -> dict:
        """What lm-eval passes to the tasks at this length: task.metadata, the length (RULER's
        max_seq_lengths) and the tokenizer's name (RULER loads the tokenizer by name to size its inputs)."""
        metadata = dict(self.metadata)
        metadata.setdefault(LENGTH_METADATA, [length])
        name = getattr(self.hf_tokenizer, "name_or_path", "")
        if isinstance(name, str) and name:
            metadata.setdefault("tokenizer", name)
        return metadata

    def _manager(self, length: int):
        """lm-eval's TaskManager for this length's metadata (indexing lm-eval's own tasks takes seconds:
        kept per job)."""
        from lm_eval.tasks import TaskManager

        metadata = self._metadata(length)
        key = json.dumps(metadata, sort_keys=True, default=str)
        if key not in self._managers:
            self._managers[key] = TaskManager(include_path=self.include_path, include_defaults=self.include_defaults,
                                              metadata=metadata)
        return self._managers[key]

    def _check_names(self, manager) -> None:
        known = set(manager.all_tasks)
        for spec in self.tasks:
            if not _is_yaml(spec) and spec not in known:
                close = difflib.get_close_matches(spec, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                where = "" if self.include_defaults else " with task.include_defaults=false"
                raise HarnessError(f"unknown lm-eval task {spec!r}{where}{hint}; `lm-eval ls tasks` lists them "
                                   f"(add folders of your own task YAMLs with task.include_path)")

    def evaluate_length(self, model, length: int) -> list[dict]:
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        lm = HFLM(pretrained=model, tokenizer=self.hf_tokenizer, batch_size=1, max_length=length, **self.model_args)
        if self.buckets:
            return self._evaluate_buckets(lm, length)
        return rows_from_results(self._run(lm, length, self.tasks, limit=self.limit), length, lm.tok_encode)

    def _run(self, lm, length: int, tasks, **kwargs) -> dict:
        """One ``lm_eval.simple_evaluate`` over ``tasks`` at this length (its logged samples kept)."""
        lm_eval = lm_eval_package()
        seeds = {key: default + self.seed for key, default in SEEDS.items()}
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=self.num_fewshot,
                                      task_manager=self._manager(length), log_samples=True,
                                      **{**seeds, **self.options, **kwargs})
        if not out or not out.get("results"):
            raise ValueError("lm-eval returned no results")
        return out

    def _evaluate_buckets(self, lm, length: int) -> list[dict]:
        """One lm-eval run per length bucket over the documents whose size falls in it (module docstring)."""
        # Every document's requests, built by lm-eval as for the real run but answered with blanks
        # (no model call), one task spec at a time to know which lm-eval tasks each spec holds.
        dry = copy.copy(lm)
        dry.loglikelihood = lambda requests, disable_tqdm=False: [(0.0, False)] * len(requests)
        dry.loglikelihood_rolling = lambda requests, disable_tqdm=False: [0.0] * len(requests)
        dry.generate_until = lambda requests, disable_tqdm=False: [""] * len(requests)
        sizes, spec_of, known = {}, {}, set(self._manager(length).all_tasks)
        for spec in self.tasks:
            found = document_sizes(self._run(dry, length, [spec], limit=None), lm.tok_encode, self.bucket_by)
            sizes.update(found)
            for name in found:
                spec_of.setdefault(name, spec)
        rows = []
        for low, high in self.buckets:
            chosen = {}
            for name, by_doc in sizes.items():
                ids = sorted(i for i, size in by_doc.items() if size >= low and (high is None or size < high))
                if ids and self.limit is not None:
                    ids = ids[:self.limit if is_integer(self.limit) else math.ceil(self.limit * len(ids))]
                if ids:
                    chosen[name] = ids
            if not chosen:
                continue
            out = self._run(lm, length, self._specs(chosen, spec_of, known), samples=chosen)
            label = bucket_label(low, high)
            rows += [dict(row, bucket=label) for row in rows_from_results(out, length, lm.tok_encode)]
        if not rows:
            counts = {name: len(by_doc) for name, by_doc in sizes.items()}
            raise ValueError(f"no document falls in task.length_buckets "
                             f"{', '.join(bucket_label(*b) for b in self.buckets)} by {self.bucket_by} "
                             f"(documents per lm-eval task: {counts})")
        return rows

    @staticmethod
    def _specs(chosen: dict, spec_of: dict, known: set) -> list[str]:
        """What to name to lm-eval for the tasks in ``chosen`` and no other (lm-eval runs every document of
        a task that ``samples`` leaves out): a task by its name, or a task YAML file that holds only it."""
        specs = []
        for name in chosen:
            spec = name if name in known else spec_of[name]
            if spec != name and any(other not in chosen for other, of in spec_of.items() if of == spec):
                raise HarnessError(f"task.length_buckets: {spec} holds lm-eval tasks without documents in a bucket "
                                   f"that others have; add its folder with task.include_path and name its tasks")
            if spec not in specs:
                specs.append(spec)
        return specs

    @classmethod
    def summary_table(cls, frame):
        """The aggregate rows: one line per (lm-eval task, metric), one column per length."""
        rows = frame[(frame["sample"] == -1) & (frame["status"] == "ok")]
        if rows.empty:
            return None
        index = ["lm_eval_task", "metric"]
        if "bucket" in rows.columns and rows["bucket"].notna().any():
            index.append("bucket")
        return rows.pivot_table(index=index, columns="length", values="score", aggfunc="first").round(4)

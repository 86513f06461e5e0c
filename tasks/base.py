"""What a task is, for the runner.

A task is built from its Hydra config (``conf/task/<name>.yaml`` names the class in ``_target_``)
plus the loaded model's tokenizer and prompt template, and then answers two questions:

* ``build_input(length, index)`` -> :class:`TaskInput`: the index-th input of a given length. It
  never touches the model and is a pure function of (task config, tokenizer, length, seed, index),
  so every method sees exactly the same tokens (the runner stores a hash of them in each row).
* ``evaluate(model, task_input)`` -> dict: run the (method-applied) model on that input and return
  at least ``score`` (a float; the task's ``metric``), plus any task-specific columns.

The class also states the facts the rest of the harness reads without building it: what its
``length`` counts (``length_unit``) and, for plan mode, the tokens such an input has
(:meth:`prompt_tokens`), the tokens it generates (:meth:`generated_tokens`) and the logits it
holds (:meth:`logits_positions`); its own columns with their types (``columns``), of which the
measured ones (``timing_columns``); and its figures (``figures``).

A task that hands the model to an evaluator running over its own documents (lm-evaluation-harness)
cannot build one input at a time: it sets ``whole_length`` and implements
``evaluate_length(model, length)`` instead, which returns every row of a length at once (see
:meth:`Task.evaluate_length`); its config has no ``samples``.

Adding a task is one module with one such class, plus one config file (``_target_`` names the
class). Defining a subclass that sets ``name`` registers it in :data:`TASKS`, and importing the
``tasks`` package imports every module in it, so no other file lists task names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from harness.architectures import architecture_of
from harness.errors import HarnessError
from harness.registry import register
from harness.validation import require_integer


@dataclass(frozen=True)
class TaskInput:
    input_ids: list[int]
    info: dict[str, Any] = field(default_factory=dict)  # columns for the row (e.g. the passkey and its depth)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


# name -> class of every task defined so far; ``import tasks`` defines the built-in ones.
TASKS: dict[str, type[Task]] = {}
LENGTH_UNITS = ("tokens", "lines")
SCORE_KINDS = ("binary", "continuous", None)
# The one list of figure kinds: plots.figures draws each (and checks it draws no other).
FIGURE_KINDS = ("accuracy", "mean_std", "memory_and_latency", "depth_map", "hidden_curve", "attention_map")


@dataclass(frozen=True)
class Figure:
    """One figure of a task's rows versus length, drawn by ``plots.figures`` (one panel per model).

    ``kind`` (one of FIGURE_KINDS): "accuracy" (the mean of 0/1 scores with 95% Wilson intervals),
    "mean_std" (the mean score with a band of +- one standard deviation), "memory_and_latency" (the
    columns ``peak_mb``, ``prefill_s`` and ``decode_ms_per_token`` as bars and lines), "depth_map"
    (accuracy by the ``depth`` column and length, a panel per method), "hidden_curve" (the hidden
    task's value vs position per layer and dimension) or "attention_map" (the attention-map task's
    pooled (query bin, key bin) weights, a panel per method). Length axes in tokens also mark the
    model's training length."""

    file: str  # file name without suffix, e.g. "passkey_accuracy"
    kind: str
    title: str
    ylabel: str = ""
    caption: str = ""  # for the figures' index page


class Task:
    name = "task"
    metric = "score"  # what ``score`` means, written to each row (e.g. "accuracy", "nll")
    length_unit: ClassVar[str] = "tokens"  # what ``length`` counts: "tokens" or "lines"
    # The task's own row columns (keys of TaskInput.info and of evaluate()'s dict) and their types;
    # a ``str`` column is read back as text (an answer "0042" stays "0042").
    columns: ClassVar[dict[str, type]] = {}
    # Of those, the ones measured rather than computed: they differ between two runs of a sweep.
    timing_columns: ClassVar[tuple[str, ...]] = ()
    figures: ClassVar[tuple[Figure, ...]] = ()
    # How python -m harness.compare pairs two methods' scores on the same inputs: "binary" (0/1
    # scores: McNemar's exact test), "continuous" (the exact sign-flip test), None (not compared,
    # e.g. timings); and which direction of ``score`` is better.
    score_kind: ClassVar[str | None] = None
    higher_is_better: ClassVar[bool] = True
    # Options added after rows were committed, with the value that reproduces those rows: left out
    # of the results hash at that value, so the committed files stay resumable.
    hash_neutral_defaults: ClassVar[dict[str, Any]] = {}
    # Whether the heat maps (method x length mean score) draw this task: not for rows that mix metrics.
    heatmap: ClassVar[bool] = True
    needs_tokenizer = True
    # True: the task evaluates every sample of a length in one call (``evaluate_length``), and the
    # runner claims, computes and skips whole lengths; False: one (length, sample) input per call.
    whole_length: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        if cls.score_kind not in SCORE_KINDS:
            raise TypeError(f"task {cls.name!r}: score_kind must be one of {SCORE_KINDS}, got {cls.score_kind!r}")
        if cls.length_unit not in LENGTH_UNITS:
            raise TypeError(f"task {cls.name!r}: length_unit must be one of {LENGTH_UNITS}, got {cls.length_unit!r}")
        if not set(cls.timing_columns) <= set(cls.columns):
            raise TypeError(f"task {cls.name!r}: timing_columns must be among its columns")
        if any(figure.kind not in FIGURE_KINDS for figure in cls.figures):
            raise TypeError(f"task {cls.name!r}: a figure's kind must be one of {FIGURE_KINDS}")
        register(TASKS, cls, "task")

    # -- facts for plan mode: computed from the task's config (``params``), without building it --
    @classmethod
    def prompt_tokens(cls, length: int, params: dict) -> int:
        """Tokens of an input of ``length`` (in ``length_unit``); exact for lengths in tokens."""
        return length

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        """Tokens each sample runs through the cached decoder after its prompt, at most."""
        return 0

    @classmethod
    def logits_positions(cls, params: dict) -> int:
        """Positions whose full-vocabulary logits (float32) the task holds at once."""
        return 1

    @classmethod
    def samples_per_length(cls, params: dict) -> int:
        """Samples one length has (plan mode): ``samples`` from the config; a ``whole_length`` task
        says what it knows (0: not known before it runs)."""
        return int(params.get("samples") or 0)

    @classmethod
    def plan_notes(cls, params: dict) -> list[str]:
        """Lines plan mode prints under the task's table (what its estimate assumes)."""
        return []

    @classmethod
    def writes_column(cls, column: str) -> bool:
        """Whether rows of this task can have ``column`` of its own (a results file with any other
        column that is not a common one is reported as not the harness's)."""
        return column in cls.columns

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Refuse settings the task cannot run with, as one line (a HarnessError), before anything is
        loaded: run and plan mode call it with the task's config."""

    @classmethod
    def tables(cls, frame) -> dict[str, Any]:
        """Tables drawn from the collected rows (all tasks' ``frame``) that ``python -m plots``
        writes next to the figures: {file name without suffix: a pandas frame}."""
        return {}

    @classmethod
    def summary_table(cls, frame):
        """The table a run prints for its rows (a pandas frame), or None for the usual one per length."""
        return None

    def __init__(self, lengths, samples: int = 0, tokenizer=None, prompt_template: str = "raw", seed: int = 0,
                 train_length: int | None = None, vocab_size: int | None = None, **params):
        self.lengths = [int(x) for x in lengths]
        self.samples = int(samples)
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.seed = int(seed)
        self.train_length = train_length
        self.vocab_size = vocab_size
        if params:
            raise ValueError(f"unknown parameter(s) for task {self.name!r}: {', '.join(sorted(params))}")

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse, as one line (a HarnessError), settings that do not fit the loaded model (e.g. a
        layer it does not have). The runner calls it once, after the method is applied and before
        any sample is computed."""

    def build_input(self, length: int, index: int) -> TaskInput:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, task_input: TaskInput) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate_length(self, model: torch.nn.Module, length: int) -> list[dict[str, Any]]:
        """(``whole_length`` tasks) Evaluate every sample of ``length`` at once and return their rows.

        Each row is a dict with ``sample`` (a sample's index, or -1 for a row about all of them, such
        as an aggregate score), ``score``, and optionally ``metric`` (when rows differ in what they
        measure), ``tokens``, ``input_hash`` and the task's columns. The runner adds the provenance
        and the length's ``seconds`` to every row and appends them together once the call returns;
        a length that raises gets one ``error``/``oom`` row with sample -1. A rerun skips every length
        that has rows."""
        raise NotImplementedError


def check_layers(model, layers) -> None:
    """Refuse, in one line, decoder layer indices (negative: from the end) the model does not have."""
    count = len(architecture_of(model).layers_of(model))
    bad = [index for index in layers if not -count <= index < count]
    if bad:
        raise HarnessError(f"task.layers {bad} out of range: the model has {count} decoder layers "
                           f"(0..{count - 1}, or -{count}..-1 from the end)")


def check_integer(params: dict, key: str, minimum: int = 1) -> None:
    """One line (a HarnessError) unless ``params[key]``, when given, is an integer >= ``minimum``;
    for a task's :meth:`Task.check_params`."""
    if key in params:
        require_integer(params[key], f"task.{key}", minimum)


def greedy_generate(model: torch.nn.Module, input_ids: list[int], max_new_tokens: int, eos_token_id=None,
                    stop=None) -> list[int]:
    """Greedy decoding of up to ``max_new_tokens``; returns only the new token ids. ``stop``, when
    given, is called with the new ids after each step and ends the generation when it returns True
    (that step's token is kept)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, ids, scores, **kwargs):
            done = stop(ids[0, prompt:].tolist())
            return torch.full((ids.shape[0],), bool(done), dtype=torch.bool, device=ids.device)

    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    prompt = ids.shape[1]
    criteria = StoppingCriteriaList([Stop()]) if stop is not None else None
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=eos_token_id, eos_token_id=eos_token_id,
                             stopping_criteria=criteria)
    return out[0, prompt:].tolist()

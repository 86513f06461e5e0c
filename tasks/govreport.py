"""GovReport summarization (the paper's table: ROUGE-1/2/L by input length; Mesa 30.2/10.1/26.6 at
~11k tokens, Origin 0/0/0).

The paper names no protocol or dataset copy, and its released code has none. This one follows
LongBench's ``gov_report`` (its prompt and its middle truncation) on the Hub's
``ccdv/govreport-summarization`` (fields ``report`` and ``summary``), any copy readable by
``datasets`` (``task.dataset``: a Hub name, or ``json`` with ``data_files`` for a local JSONL):

* sample ``index`` at ``length`` is the index-th document, in dataset order, whose prompt is at
  least ``length`` tokens; its report is cut in the middle (its first and last halves kept, as
  LongBench does) so the whole prompt is exactly ``length`` tokens. Every method sees the same tokens;
* the model's prompt template (``model.prompt_template``) wraps LongBench's instruction; greedy
  decoding of up to ``max_new_tokens``;
* ROUGE-1/2/L F1 (x100) of the generated summary against the reference, with Google's
  ``rouge-score`` package (stemming on, as in LongBench and the YaRN/Self-Extend papers);
  ``score`` is ROUGE-L.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from tasks.base import Figure, Task, TaskInput, check_integer, greedy_generate
from tasks.prompts import format_prompt

# LongBench's gov_report prompt (dataset2prompt.json); the report goes where REPORT stands.
INSTRUCTION = "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
REPORT = "\x00REPORT\x00"
QUESTION = "Now, write a one-page summary of the report."
ANSWER_PREFIX = "Summary:"
# datasets' builders for local files (``task.dataset.path=json`` with ``data_files``): not the Hub
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
DATASET_KEYS = {"path", "name", "split", "data_files", "text_field", "summary_field", "max_documents"}


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 (rouge-score, stemming on)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise HarnessError("task govreport needs the rouge-score package: pip install -e '.[govreport]'") from None
    scores = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(reference, prediction)
    return {name: 100 * value.fmeasure for name, value in scores.items()}


class GovReportTask(Task):
    name = "govreport"
    metric = "rougeL"
    score_kind = "continuous"
    columns = {"doc_id": str, "rouge1": float, "rouge2": float, "rougeL": float, "summary": str,
               "generated_tokens": int}
    figures = (Figure("govreport_rouge", "mean_std", "GovReport summarization", "ROUGE-L F1 (x100, mean +- std)",
                      "GovReport summarization (the paper's table): ROUGE-L of the greedy summary vs input length, "
                      "reports cut in the middle to the length; band = +- one std over documents."),)

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        return int(params["max_new_tokens"])

    @classmethod
    def check_params(cls, params: dict) -> None:
        check_integer(params, "max_new_tokens")  # the summary is generated: at least one token

    def __init__(self, *args, dataset: dict, max_new_tokens: int = 512, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset = dict(dataset or {})
        unknown = sorted(set(self.dataset) - DATASET_KEYS)
        if unknown or not self.dataset.get("path"):
            raise HarnessError(f"task.dataset needs a path and accepts {', '.join(sorted(DATASET_KEYS))}; "
                               f"got {', '.join(sorted(self.dataset)) or 'nothing'}")
        self.check_params(dict(max_new_tokens=max_new_tokens))
        self.max_new_tokens = int(max_new_tokens)
        self._docs: list[tuple[str, list[int], str]] = []  # (doc_id, report token ids, reference summary)
        self._source: Iterator[tuple[str, str, str]] | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def _prompt_parts(self) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the report."""
        text = format_prompt(self.prompt_template, self.tokenizer, INSTRUCTION + REPORT, QUESTION, ANSWER_PREFIX)
        before, after = text.split(REPORT)
        special = self.prompt_template != "chat"  # a chat template writes its own special tokens
        return (self.tokenizer.encode(before, add_special_tokens=special),
                self.tokenizer.encode(after, add_special_tokens=False))

    def _documents(self) -> Iterator[tuple[str, str, str]]:
        import datasets  # slow to import; only this task needs it here

        config = self.dataset
        text_field, summary_field = config.get("text_field", "report"), config.get("summary_field", "summary")
        try:
            rows = datasets.load_dataset(config["path"], name=config.get("name"), data_files=config.get("data_files"),
                                         split=config.get("split", "test"))
        except Exception as error:  # noqa: BLE001 - network, missing dataset, bad split: all one line
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            hub = config["path"] not in LOCAL_BUILDERS and not Path(config["path"]).expanduser().exists()
            offline = ("; without the Hub, use a local JSONL copy: task.dataset.path=json "
                       "task.dataset.data_files=/path/to/govreport.jsonl task.dataset.split=train" if hub else "")
            raise HarnessError(f"cannot load dataset {config['path']}: {first}{offline}") from None
        for index, row in enumerate(rows):
            if index == config.get("max_documents"):
                return
            missing = [f for f in (text_field, summary_field) if f not in row]
            if missing:
                raise HarnessError(f"dataset {config['path']} has no field {missing[0]!r} (fields: {', '.join(row)}); "
                                   "set task.dataset.text_field / summary_field")
            yield str(row.get("id", index)), row[text_field] or "", row[summary_field] or ""

    def _document(self, position: int) -> tuple[str, list[int], str] | None:
        """The position-th document (tokenized lazily, in dataset order), or None past the end."""
        if self._source is None:
            self._source = self._documents()
        while len(self._docs) <= position:
            item = next(self._source, None)
            if item is None:
                return None
            doc_id, report, summary = item
            self._docs.append((doc_id, self.tokenizer.encode(report, add_special_tokens=False), summary))
        return self._docs[position]

    def build_input(self, length: int, index: int) -> TaskInput:
        before, after = self._prompt_parts()
        budget = length - len(before) - len(after)
        if budget <= 0:
            raise HarnessError(f"govreport length {length} is shorter than the prompt without a report "
                               f"({len(before) + len(after)} tokens)")
        found, position = -1, 0
        while (doc := self._document(position)) is not None:
            found += len(doc[1]) >= budget
            if found == index:
                doc_id, report, summary = doc
                kept = report[: budget // 2] + report[len(report) - (budget - budget // 2):]
                return TaskInput(before + kept + after, {"doc_id": doc_id})
            position += 1
        raise HarnessError(f"the dataset has only {found + 1} document(s) of {budget}+ report tokens "
                           f"for govreport length {length}; lower task.samples or the length")

    # -- scoring ---------------------------------------------------------------------------------
    def evaluate(self, model, task_input: TaskInput) -> dict[str, Any]:
        new = greedy_generate(model, task_input.input_ids, self.max_new_tokens, self.tokenizer.eos_token_id)
        summary = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        reference = next(doc[2] for doc in self._docs if doc[0] == task_input.info["doc_id"])
        scores = rouge(summary, reference)
        return {"score": scores["rougeL"], **scores, "summary": summary, "generated_tokens": len(new)}

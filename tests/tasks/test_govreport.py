"""GovReport: input building on a local JSONL stand-in, ROUGE, and a job on the tiny model."""

from pathlib import Path

import pytest

from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from tasks import govreport

DATA = Path(__file__).resolve().parents[1] / "data" / "govreport" / "test.jsonl"
LOCAL = dict(path="json", data_files=str(DATA), split="train")  # datasets names a lone JSON file's split "train"
TOKENIZER = ByteTokenizer()


def task(**dataset):
    return govreport.GovReportTask([300], 2, TOKENIZER, dataset=dict(LOCAL, **dataset), max_new_tokens=4)


@pytest.mark.parametrize("length", [300, 1000, 3000])
def test_a_report_is_cut_in_the_middle_to_the_exact_length(length):
    t = task()
    sample = t.build_input(length, 0)
    assert sample.tokens == length
    text = TOKENIZER.decode(sample.input_ids)
    report = t._docs[0][1]
    assert text.startswith(govreport.INSTRUCTION) and text.endswith(govreport.ANSWER_PREFIX)
    head, tail = TOKENIZER.decode(report[:50]), TOKENIZER.decode(report[-50:])
    assert head in text and tail in text  # the report's start and end are kept
    assert task().build_input(length, 0) == sample  # a pure function of its inputs


def test_sample_i_is_the_ith_document_long_enough():
    t = task()
    assert [t.build_input(300, i).info["doc_id"] for i in range(4)] == ["gov-0", "gov-1", "gov-2", "gov-3"]
    long_enough = [d for d in (t._document(i) for i in range(4)) if len(d[1]) >= 4000]
    assert t.build_input(4100, 0).info["doc_id"] == long_enough[0][0]
    with pytest.raises(HarnessError, match="^the dataset has only .* lower task.samples or the length"):
        t.build_input(4100, len(long_enough))


def test_bad_dataset_settings_are_one_line():
    with pytest.raises(HarnessError, match="^task.dataset needs a path"):
        govreport.GovReportTask([300], 1, TOKENIZER, dataset=dict(LOCAL, typo=1))
    with pytest.raises(HarnessError, match="^dataset json has no field 'text'"):
        task(text_field="text").build_input(300, 0)
    with pytest.raises(HarnessError, match="^cannot load dataset"):
        task(data_files=str(DATA.with_name("missing.jsonl"))).build_input(300, 0)


def test_without_the_hub_the_error_points_to_the_local_jsonl_option(monkeypatch):
    import datasets

    def offline(*args, **kwargs):  # what datasets raises with no network
        raise ConnectionError("Couldn't reach 'ccdv/govreport-summarization' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    hub = govreport.GovReportTask([300], 1, TOKENIZER, dataset=dict(path="ccdv/govreport-summarization"))
    with pytest.raises(HarnessError, match=r"^cannot load dataset ccdv/govreport-summarization: Couldn't reach .*; "
                                           r"without the Hub, use a local JSONL copy: task.dataset.path=json "
                                           r"task.dataset.data_files=.* task.dataset.split=train$"):
        hub.build_input(300, 0)
    with pytest.raises(HarnessError) as local:  # a local copy that fails needs no pointer to itself
        task().build_input(300, 0)
    assert "without the Hub" not in str(local.value)


def test_rouge():
    same = govreport.rouge("the department agreed with the recommendations",
                           "the department agreed with the recommendations")
    assert same == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    partial = govreport.rouge("the department agreed", "the department agreed with the recommendations")
    assert partial["rouge1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)  # precision 1, recall 3/6
    assert govreport.rouge("", "a reference")["rougeL"] == 0.0


def test_a_job_writes_rows_and_a_rerun_computes_nothing(tmp_path):
    from harness.runner import run_job
    from tests.test_runner import config, rows

    cfg = config(tmp_path, "task.dataset.path=json", f"task.dataset.data_files={DATA}", "task.dataset.split=train",
                 "task.max_new_tokens=4", task="govreport")
    first = run_job(cfg)
    table = rows(first)
    assert len(table) == 4 and (table.status == "ok").all()
    assert set(table.columns) >= {"rouge1", "rouge2", "rougeL", "summary", "doc_id", "generated_tokens"}
    assert (table.score == table.rougeL).all() and (table.tokens == table.length).all()
    assert run_job(cfg).counts["skipped"] == 4

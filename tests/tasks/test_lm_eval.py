"""The lm-evaluation-harness task, offline: a local lm-eval task (tests/data/lm_eval: a long note with
a secret animal, asked by multiple choice and by generation) on the tiny random model (trained at
128 tokens; the notes are ~4.7k byte tokens) and, slow, on SmolLM2 with its training length set to
512 (the notes are ~1k of its tokens). The method is really applied (Origin and Mesa give other
log-likelihoods on the same tokens, and would not if applying did nothing), rows are tidy and a
rerun computes nothing. lm_eval is part of the dev extra."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from harness.plan import format_plan, plan_job
from harness.results import COMMON_COLUMNS, ResultsFile
from harness.runner import run_job
from harness.summary import print_job_summary
from tasks import TASKS
from tasks.lmeval import LmEvalTask, rows_from_results
from tests.conftest import TRAIN_LENGTH

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "tests" / "data" / "lm_eval"
CHOICE = f"{LOCAL}/long_recall.yaml"  # multiple choice: per-choice log-likelihoods
GENERATE = f"{LOCAL}/long_recall_generate.yaml"  # generate_until: greedy text
SIZES = f"{LOCAL}/long_recall_sizes.yaml"  # notes of ~0.2k-3.8k byte tokens, for length buckets


def lm_config(tmp_path, *overrides, model="tiny-random", tasks=(CHOICE, GENERATE)):
    base = [f"model={model}", "task=lm-eval", f"task.tasks=[{','.join(tasks)}]", "task.limit=2", "task.lengths=[8192]",
            "task.include_defaults=false", f"results_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def rows(summary) -> pd.DataFrame:
    return ResultsFile(summary.path, [], tasks=TASKS).read()


def no_model(*args, **kwargs):
    raise AssertionError("must not load the model")


def per_sample(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["sample"] >= 0].set_index(["lm_eval_task", "metric", "sample"]).sort_index()


def differing(a: pd.DataFrame, b: pd.DataFrame) -> list:
    """Documents of the multiple-choice task whose per-choice log-likelihoods differ between two jobs'
    rows, after checking that both saw the same tokens."""
    a, b = per_sample(a).loc[("long_recall", "acc")], per_sample(b).loc[("long_recall", "acc")]
    assert list(a.index) == list(b.index) and list(a["input_hash"]) == list(b["input_hash"])
    return [key for key in a.index if json.loads(a.at[key, "response"]) != json.loads(b.at[key, "response"])]


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval")
    return folder, run_job(lm_config(folder, "method=origin"))


# -- rows, resume, the method ---------------------------------------------------------------------
def test_a_job_writes_tidy_rows_per_document_and_aggregate(origin):
    _, summary = origin
    frame = pd.read_csv(summary.path)  # plain pandas reads the file
    assert list(frame.columns) == COMMON_COLUMNS + list(LmEvalTask.columns)
    assert set(frame["status"]) == {"ok"} and set(frame["task"]) == {"lm-eval"} and set(frame["length"]) == {8192}
    documents = frame[frame["sample"] >= 0]
    assert sorted(zip(documents["lm_eval_task"], documents["metric"], documents["sample"])) == [
        ("long_recall", "acc", 0), ("long_recall", "acc", 1),
        ("long_recall_generate", "exact_match", 0), ("long_recall_generate", "exact_match", 1)]
    assert (documents["tokens"] > 4 * TRAIN_LENGTH).all() and documents["input_hash"].notna().all()
    assert set(documents["score"]) <= {0.0, 1.0}
    choices = json.loads(documents[documents["lm_eval_task"] == "long_recall"]["response"].iloc[0])
    assert len(choices) == 4 and all(len(pair) == 2 and pair[0] < 0 for pair in choices)  # [log-likelihood, is-greedy]
    aggregate = frame[frame["sample"] == -1].set_index("lm_eval_task")
    assert sorted(aggregate.index) == ["long_recall", "long_recall_generate"]
    assert set(aggregate["n_samples"]) == {2}
    assert aggregate.at["long_recall", "score"] == documents[documents["lm_eval_task"] == "long_recall"]["score"].mean()
    assert summary.counts["ok"] == len(frame) and summary.path.with_suffix(".yaml").exists()


def test_a_rerun_computes_nothing(origin, monkeypatch, capsys):
    folder, first = origin
    before = first.path.read_bytes()
    monkeypatch.setattr("harness.models.load_model", no_model)
    monkeypatch.setattr(LmEvalTask, "evaluate_length", no_model)
    again = run_job(lm_config(folder, "method=origin"))
    assert again.path == first.path and first.path.read_bytes() == before
    assert again.counts == {"ok": 0, "oom": 0, "error": 0, "skipped": len(rows(first)), "busy": 0}
    print_job_summary(again)  # the aggregate scores, one column per length
    out = capsys.readouterr().out
    assert "long_recall_generate" in out and "exact_match" in out and "8192" in out


def test_origin_and_mesa_differ_past_the_training_length(origin, tmp_path):
    """Mesa (with the tiny model's settings, conf/model_method/tiny-random_mesa.yaml) gives other
    log-likelihoods than Origin on every document: the notes are far beyond 128 tokens."""
    _, first = origin
    mesa = rows(run_job(lm_config(tmp_path, "method=mesa")))
    assert set(mesa["status"]) == {"ok"} and (mesa[mesa["sample"] >= 0]["tokens"] > TRAIN_LENGTH).all()
    assert differing(rows(first), mesa) == [0, 1]


def test_the_comparison_fails_if_the_method_is_not_applied(origin, tmp_path, monkeypatch):
    """Guard: with applying a method made a no-op, 'Mesa' gives exactly Origin's log-likelihoods.
    (The tasks are named here, found in task.include_path, rather than given as YAML files.)"""
    _, first = origin
    monkeypatch.setattr("harness.methods.apply_method", lambda model, method: model)
    unchanged = rows(run_job(lm_config(tmp_path, "method=mesa", f"task.include_path={LOCAL}",
                                       tasks=["long_recall", "long_recall_generate"])))
    assert set(unchanged["method"]) == {"mesa"}
    assert differing(rows(first), unchanged) == []


def test_a_failing_run_is_one_error_row_for_its_length(tmp_path, monkeypatch, capsys):
    def fail(self, model, length):
        raise RuntimeError("the dataset cannot be downloaded\nsecond line")

    monkeypatch.setattr(LmEvalTask, "evaluate_length", fail)
    summary = run_job(lm_config(tmp_path, "method=origin", "task.lengths=[256,512]"))
    frame = rows(summary)
    assert summary.counts == {"ok": 0, "oom": 0, "error": 2, "skipped": 0, "busy": 0}
    assert list(zip(frame["length"], frame["sample"], frame["status"], frame["message"], frame["metric"])) == [
        (256, -1, "error", "the dataset cannot be downloaded", "-"),
        (512, -1, "error", "the dataset cannot be downloaded", "-")]
    monkeypatch.undo()
    monkeypatch.setattr("harness.models.load_model", no_model)
    assert run_job(lm_config(tmp_path, "method=origin", "task.lengths=[256,512]")).counts["skipped"] == 2
    print_job_summary(summary)  # no aggregate rows: the usual table
    assert "error" in capsys.readouterr().out


def test_heat_maps_leave_out_rows_that_mix_metrics(origin, tmp_path):
    from plots.figures import plot_heatmaps

    _, first = origin
    assert plot_heatmaps(rows(first), tmp_path) == []


# -- one-line errors ------------------------------------------------------------------------------
def test_an_unknown_lm_eval_task_is_one_line(tmp_path):
    cfg = lm_config(tmp_path, "method=origin", f"task.include_path={LOCAL}", tasks=["long_recal"])
    with pytest.raises(HarnessError, match=r"^task 'lm-eval': unknown lm-eval task 'long_recal' .*did you mean "
                                           r"long_recall.*lm-eval ls tasks"):
        run_job(cfg)
    assert not list(tmp_path.glob("runs/**/*.csv"))


@pytest.mark.parametrize("override,message", [
    ("task.limit=-1", "task.limit must be null, a positive integer"),
    ("task.num_fewshot=x", "task.num_fewshot must be a non-negative integer or null"),
    ("task.tasks=[]", "task.tasks must be a list of lm-eval task names"),
    ("task.tasks=[nowhere/x.yaml]", "lm-eval task file nowhere/x.yaml does not exist"),
    ("task.include_path=nowhere", "task.include_path nowhere is not a folder"),
    ("+task.options.limit=3", "task.options.limit cannot be set here: use task.limit"),
    ("+task.options.bootstrap=0", "task.options.bootstrap is not an argument of lm-eval's simple_evaluate; accepted: "),
    ("+task.model_args.max_length=5", r"task.model_args.max_length cannot be set here: the length \(task.lengths\)"),
    ("task.length_buckets=[[10,5]]", r"task.length_buckets must be null or a list of \[low, high\] sizes"),
    ("task.length_buckets=[4096]", r"task.length_buckets must be null or a list of \[low, high\] sizes"),
    ("task.length_buckets=[[0,100],[50,null]]", "task.length_buckets overlap: 0-100 and from 50"),
    ("task.length_buckets=[[100,null],[0,200]]", "task.length_buckets overlap: 0-200 and from 100"),
    ("task.bucket_by=''", "task.bucket_by must be 'tokens' or the name of a numeric document field"),
])
def test_bad_settings_are_one_line_before_anything_loads(tmp_path, monkeypatch, override, message):
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=f"^{message}"):
            job(lm_config(tmp_path, "method=origin", override))


def test_without_lm_eval_it_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError,
                           match=r"^task 'lm-eval' needs lm-evaluation-harness.*pip install -e '\.\[lm-eval\]'$"):
            job(lm_config(tmp_path, "method=origin"))


def test_without_lm_eval_the_command_line_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "fake" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('lm_eval is not installed (simulated)')\n")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "harness", "model=tiny-random", "task=lm-eval", "results_dir=res"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == ("error: task 'lm-eval' needs lm-evaluation-harness, an optional extra: "
                                   "pip install -e '.[lm-eval]'")
    assert not (tmp_path / "res").exists()


# -- plan mode ------------------------------------------------------------------------------------
def test_plan_mode_counts_lengths_done_and_loads_nothing(origin, monkeypatch):
    folder, _ = origin
    monkeypatch.setattr("harness.models.load_model", no_model)
    plan = plan_job(lm_config(folder, "method=origin", "task.lengths=[8192,16384]"))
    assert [(c.length, c.samples, c.done, c.to_run) for c in plan.cells] == [(8192, 4, 4, 0), (16384, 4, 0, 4)]
    assert plan.cells[1].prompt_tokens == 16384 and plan.cells[1].memory["total"] > 0
    assert "each length is one lm-eval run over up to task.limit=2 documents" in format_plan(plan)


# -- how lm-eval's results become rows --------------------------------------------------------------
def test_rows_from_results_mapping():
    """RULER-style metrics named after lengths (placeholders -1 for the other lengths are left out),
    filters in the metric name, a group's aggregate, and per-document values that are not numbers."""
    out = {
        "samples": {
            "niah": [{"doc_id": 3, "arguments": [("abc", {"until": []})], "metrics": ["4096", "8192"], "4096": -1,
                      "8192": 1.0, "filter": "none", "target": ["42"], "filtered_resps": ["42."]}],
            "qa": [{"doc_id": 0, "arguments": {"gen_args_0": {"arg_0": "ab", "arg_1": "c"}}, "metrics": ["em", "bleu"],
                    "em": True, "bleu": ("ref", "pred"), "filter": "strict", "target": "c", "filtered_resps": ["c"]}],
        },
        "results": {
            "ruler": {"alias": "ruler", "4096,none": -1, "8192,none": 0.5, "8192_stderr,none": "N/A"},
            "niah": {"alias": "niah", "sample_len": 1, "4096,none": -1, "8192,none": 1.0, "8192_stderr,none": 0.1},
            "qa": {"alias": "qa", "sample_len": 1, "em,strict": 1.0, "em_stderr,strict": 0.0, "bleu,strict": 12.5},
        },
        "group_subtasks": {"ruler": ["niah"]},
        "n-samples": {"niah": {"original": 500, "effective": 1}, "qa": {"original": 9, "effective": 1}},
    }
    got = rows_from_results(out, 8192, ByteTokenizer().encode)
    keys = [(r["lm_eval_task"], r["metric"], r["sample"], r["score"]) for r in got]
    assert keys == [("niah", "8192", 3, 1.0), ("qa", "em,strict", 0, 1.0), ("ruler", "8192", -1, 0.5),
                    ("niah", "8192", -1, 1.0), ("qa", "em,strict", -1, 1.0), ("qa", "bleu,strict", -1, 12.5)]
    by_key = {(r["lm_eval_task"], r["sample"], r["metric"]): r for r in got}
    assert by_key[("qa", 0, "em,strict")]["tokens"] == 3  # "ab" + "c": context and continuation
    assert by_key[("niah", 3, "8192")]["target"] == '["42"]' and by_key[("niah", 3, "8192")]["response"] == '["42."]'
    assert by_key[("ruler", -1, "8192")]["tokens"] == 3 and by_key[("ruler", -1, "8192")]["stderr"] is None
    assert by_key[("niah", -1, "8192")]["n_samples"] == 1 and by_key[("niah", -1, "8192")]["stderr"] == 0.1


def test_each_length_reaches_the_tasks_as_their_metadata():
    task = LmEvalTask(lengths=[512], tokenizer=ByteTokenizer(), tasks=[CHOICE], include_defaults=False)
    assert task._metadata(512) == {"max_seq_lengths": [512]}  # the byte tokenizer has no name to load it by
    assert task._manager(512).task_index is not None
    babilong = LmEvalTask(lengths=[512], tokenizer=ByteTokenizer(), tasks=[CHOICE], include_defaults=False,
                          metadata={"max_seq_lengths": "4k"})
    assert babilong._metadata(512) == {"max_seq_lengths": "4k"}


def test_the_byte_tokenizer_converts_to_transformers():
    byte = ByteTokenizer()
    converted = byte.to_transformers()
    text = "héllo\n\x00 wörld  €x"
    assert converted.encode(text) == byte.encode(text) and converted.decode(converted.encode(text)) == text
    assert converted.eos_token_id == converted.pad_token_id == byte.eos_token_id and len(converted) == 256


# -- the real model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_origin_and_mesa_differ_past_a_training_length_of_512(tmp_path, monkeypatch):
    """SmolLM2 with method.train_length=512 on ~1k-token notes (2 documents, multiple choice only:
    one forward each): Mesa chunks them, Origin does not; the rerun computes nothing."""
    common = ["method.train_length=512", "task.lengths=[2048]"]
    origin = run_job(lm_config(tmp_path, "method=origin", *common, model="smollm2-135m", tasks=[CHOICE]))
    mesa = run_job(lm_config(tmp_path, "method=mesa", *common, model="smollm2-135m", tasks=[CHOICE]))
    a, b = rows(origin), rows(mesa)
    assert set(a["status"]) == set(b["status"]) == {"ok"}
    assert (a[a["sample"] >= 0]["tokens"].between(512, 2048)).all()
    assert differing(a, b) == [0, 1]
    monkeypatch.setattr("harness.models.load_model", no_model)
    again = run_job(lm_config(tmp_path, "method=mesa", *common, model="smollm2-135m", tasks=[CHOICE]))
    assert again.counts["ok"] == 0 and again.counts["skipped"] == len(b)


# -- length buckets (the paper's LongBench table: 4-8k and 8k+) ----------------------------------------
def bucket_rows(tmp_path, *overrides):
    summary = run_job(lm_config(tmp_path, "method=origin", *overrides, tasks=[SIZES]))
    frame = rows(summary)
    assert set(frame["status"]) == {"ok"}
    documents = frame[frame["sample"] >= 0]
    chosen = {bucket: sorted(group["sample"]) for bucket, group in documents.groupby("bucket")}
    return summary, frame, documents, chosen


def test_length_buckets_run_the_first_documents_of_each_bucket_by_prompt_tokens(tmp_path, capsys):
    """Notes of 204..3769 byte tokens (doc_id order: 1049, 204, 2912, 540, 1953, 332, 3769, 1413):
    0-1000 holds docs 1, 3, 5 and 1000-2000 docs 0, 4, 7; task.limit=2 takes the first two of each,
    and the notes of 2000+ tokens are in no bucket."""
    summary, frame, documents, chosen = bucket_rows(tmp_path, "task.length_buckets=[[1000,2000],[0,1000]]")
    assert list(frame.columns) == COMMON_COLUMNS + list(LmEvalTask.columns) + ["bucket"]
    assert chosen == {"0-1000": [1, 3], "1000-2000": [0, 4]}
    for bucket, low, high in (("0-1000", 0, 1000), ("1000-2000", 1000, 2000)):
        assert documents[documents["bucket"] == bucket]["tokens"].between(low, high - 1).all()
    aggregate = frame[frame["sample"] == -1].set_index("bucket")
    assert sorted(aggregate.index) == ["0-1000", "1000-2000"] and set(aggregate["n_samples"]) == {2}
    for bucket in chosen:
        assert aggregate.at[bucket, "score"] == documents[documents["bucket"] == bucket]["score"].mean()
    print_job_summary(summary)  # one line per (task, metric, bucket)
    out = capsys.readouterr().out
    assert "0-1000" in out and "1000-2000" in out


def test_length_buckets_by_a_document_field_and_an_open_end(tmp_path):
    """bucket_by=length buckets by the documents' word counts (27, 51, 97, 197, ...; LongBench-E's
    field), not their tokens: 0-60 holds docs 1 and 5; 60+ holds the rest, the first two being 0 and 2."""
    _, _, documents, chosen = bucket_rows(tmp_path, "task.length_buckets=[[0,60],[60,null]]", "task.bucket_by=length")
    assert chosen == {"0-60": [1, 5], "60+": [0, 2]}
    missing = rows(run_job(lm_config(tmp_path, "method=origin", "task.length_buckets=[[0,60]]", "task.bucket_by=words",
                                     tasks=[SIZES])))
    assert list(missing["status"]) == ["error"] and "has no numeric field 'words'" in missing["message"][0]


def test_a_bucket_without_documents_is_left_out_and_none_at_all_is_an_error_row(tmp_path):
    _, _, _, chosen = bucket_rows(tmp_path, "task.length_buckets=[[0,100],[1000,1100]]")
    assert chosen == {"1000-1100": [0]}
    summary = run_job(lm_config(tmp_path, "method=origin", "task.length_buckets=[[0,100]]", tasks=[SIZES]))
    frame = rows(summary)
    assert list(frame["status"]) == ["error"]
    assert "no document falls in task.length_buckets 0-100" in frame["message"][0]


def test_length_buckets_leave_the_default_hash_alone_and_plan_per_bucket(tmp_path, monkeypatch):
    from omegaconf import open_dict

    from harness.job import results_path

    default = lm_config(tmp_path, "method=origin")
    before = lm_config(tmp_path, "method=origin")
    with open_dict(before):
        del before.task["length_buckets"], before.task["bucket_by"]  # the config before the options existed
    assert results_path(default)[1] == results_path(before)[1]
    bucketed = lm_config(tmp_path, "method=origin", "task.length_buckets=[[0,1000],[1000,null]]", tasks=[SIZES])
    assert results_path(bucketed)[1] != results_path(default)[1]
    monkeypatch.setattr("harness.models.load_model", no_model)
    plan = plan_job(bucketed)
    assert [(c.samples, c.to_run) for c in plan.cells] == [(4, 4)]  # limit 2 x 1 task x 2 buckets
    assert "one lm-eval run per length bucket (0-1000, 1000+, by tokens)" in format_plan(plan)


def test_the_longbench_preset_names_lm_eval_tasks_that_exist():
    """conf/experiment/longbench-gpu.yaml cannot run here (the Hub): its five LongBench-E task names
    must at least be in lm-eval's catalogue, and its buckets valid."""
    from lm_eval.tasks import TaskManager
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=longbench-gpu"])
    tasks = list(cfg.task.tasks)
    assert len(tasks) == 5 and set(tasks) <= set(TaskManager().all_tasks)
    LmEvalTask.check_params(OmegaConf.to_container(cfg.task))

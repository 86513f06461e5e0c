"""The runner: tidy rows, resume without duplicates, failure rows, and clear errors on bad input."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from harness.errors import HarnessError
from harness.job import results_path
from harness.results import COMMON_COLUMNS, ResultsFile, collect
from harness.runner import run_job
from tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, *overrides, task="passkey"):
    base = ["model=tiny-random", f"task={task}", "task.lengths=[300,400]", "task.samples=2", f"results_dir={tmp_path}"]
    if task == "passkey":
        base.append("task.max_new_tokens=2")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def rows(summary) -> pd.DataFrame:
    return ResultsFile(summary.path, [], tasks=TASKS).read()


def test_a_job_writes_one_tidy_row_per_length_and_sample(tmp_path):
    summary = run_job(config(tmp_path, "method=mesa"))
    frame = rows(summary)
    assert len(frame) == 4 and summary.counts["ok"] == 4
    assert list(frame.columns[: len(COMMON_COLUMNS)]) == COMMON_COLUMNS
    assert set(frame["status"]) == {"ok"} and set(frame["score"]) <= {0.0, 1.0}
    assert sorted(zip(frame["length"], frame["sample"])) == [(300, 0), (300, 1), (400, 0), (400, 1)]
    assert (frame["tokens"] <= frame["length"]).all()
    assert summary.path.parent == tmp_path / "runs" / "passkey" / "tiny-random"
    assert summary.path.with_suffix(".yaml").exists()  # the job's full config, for provenance


def test_rerun_computes_nothing_and_extends_without_duplicates(tmp_path, monkeypatch):
    cfg = config(tmp_path, "method=origin")
    first = run_job(cfg)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished job must not even load the model")

    monkeypatch.setattr("harness.models.load_model", no_model)
    again = run_job(cfg)
    assert again.counts == {"ok": 0, "oom": 0, "error": 0, "skipped": 4, "busy": 0}
    monkeypatch.undo()
    more = run_job(config(tmp_path, "method=origin", "task.samples=3"))  # same file, one more sample each
    assert more.path == first.path and more.counts["ok"] == 2
    frame = rows(more)
    assert len(frame) == 6 and not frame.duplicated(["length", "sample"]).any()


def test_a_crash_loses_at_most_the_sample_in_flight(tmp_path, monkeypatch):
    from tasks.passkey import PasskeyTask

    real = PasskeyTask.evaluate
    calls = {"n": 0}

    def crash_on_third(self, model, task_input):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like a kill: not an ordinary failure, nothing is recorded for it
        return real(self, model, task_input)

    monkeypatch.setattr(PasskeyTask, "evaluate", crash_on_third)
    cfg = config(tmp_path, "method=rerope")
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg)
    path = results_path(cfg)[0]
    assert len(ResultsFile(path, [], tasks=TASKS).read()) == 2
    monkeypatch.undo()
    summary = run_job(cfg)
    assert summary.counts["ok"] == 2 and summary.counts["skipped"] == 2
    assert len(rows(summary)) == 4


def test_a_torn_last_line_is_cut_and_redone(tmp_path):
    cfg = config(tmp_path, "method=origin")
    summary = run_job(cfg)
    text = summary.path.read_text()
    summary.path.write_text(text[: len(text) - 40])  # a kill in the middle of writing the last row
    again = run_job(cfg)
    assert again.counts["ok"] == 1
    frame = rows(again)
    assert len(frame) == 4 and not frame.duplicated(["length", "sample"]).any()


def test_failing_samples_are_recorded_and_the_job_goes_on(tmp_path, monkeypatch):
    from tasks.passkey import PasskeyTask

    def fail(self, model, task_input):
        if task_input.tokens > 400:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise ValueError("something else broke")

    monkeypatch.setattr(PasskeyTask, "evaluate", fail)
    summary = run_job(config(tmp_path, "method=origin", "task.lengths=[300,500]"))
    frame = rows(summary)
    assert summary.counts == {"ok": 0, "oom": 2, "error": 2, "skipped": 0, "busy": 0}
    assert set(frame[frame["length"] == 500]["status"]) == {"oom"}
    assert set(frame[frame["length"] == 300]["message"]) == {"something else broke"}


def test_every_method_sees_the_same_tokens(tmp_path):
    hashes = {m: rows(run_job(config(tmp_path, f"method={m}", "task.lengths=[300]"))) for m in ("origin", "mesa")}
    assert list(hashes["origin"]["input_hash"]) == list(hashes["mesa"]["input_hash"])
    assert hashes["origin"]["input_hash"].nunique() == 2


@pytest.mark.parametrize("lengths,match", [("[-5]", "positive"), ("[1.5]", "positive"), ("[abc]", "positive"),
                                           ("[0]", "positive")])
def test_bad_lengths(tmp_path, lengths, match):
    with pytest.raises(HarnessError, match=match):
        run_job(config(tmp_path, "method=origin", f"task.lengths={lengths}"))


def test_a_length_the_task_cannot_build_is_refused_before_any_compute(tmp_path):
    with pytest.raises(HarnessError, match="cannot build length 20"):
        run_job(config(tmp_path, "method=origin", "task.lengths=[300,20]"))
    assert not list(tmp_path.glob("runs/**/*.csv"))


def test_a_corrupted_results_file_is_reported_and_left_alone(tmp_path):
    cfg = config(tmp_path, "method=origin")
    path = results_path(cfg)[0]
    path.parent.mkdir(parents=True)
    path.write_text("this is,not\na results file\n")
    with pytest.raises(HarnessError, match="corrupted"):
        run_job(cfg)
    assert path.read_text() == "this is,not\na results file\n"


def test_a_missing_local_model_path(tmp_path):
    with pytest.raises(HarnessError, match="local_path"):
        run_job(config(tmp_path, "method=origin", "model=llama2-7b", f"model.local_path={tmp_path}/nope"))


def test_a_corpus_without_long_documents(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("short text " * 10)
    with pytest.raises(HarnessError, match="no document"):
        run_job(config(tmp_path, "method=origin", "task.lengths=[1000]", f"task.corpus.path={docs}", task="ppl"))


def test_collect_gathers_every_job(tmp_path):
    run_job(config(tmp_path, "method=origin", "task.lengths=[300]"))
    run_job(config(tmp_path, "method=mesa", "task.lengths=[300]"))
    table = collect(tmp_path, tmp_path / "all.csv", tasks=TASKS)
    assert len(table) == 4 and set(table["method"]) == {"origin", "mesa"}
    assert len(pd.read_csv(tmp_path / "all.csv")) == 4


def harness_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_multirun_summary_and_one_line_errors(tmp_path):
    common = ["model=tiny-random", "task=passkey", "task.lengths=[300]", "task.samples=1", "task.max_new_tokens=2",
              f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"]
    done = harness_cli("-m", "method=origin,mesa", *common)
    assert done.returncode == 0, done.stderr
    assert "sweep: 2 jobs, 2 new ok rows, 0 failed samples, 0 jobs not run" in done.stdout
    assert len(list(tmp_path.glob("runs/passkey/tiny-random/*.csv"))) == 2

    bad = harness_cli("method=origin", *common[:-1], "task.lengths=[-3]", f"hydra.run.dir={tmp_path}/run")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: task.lengths must be positive integers")
    assert "Traceback" not in bad.stderr

    mixed = harness_cli("-m", "method=origin", "task.lengths=[300],[-3]", *common[:2], *common[3:])
    assert mixed.returncode == 1
    assert "1 jobs not run" in mixed.stdout


def test_sigkill_mid_run_then_rerun_completes_without_duplicates(tmp_path):
    """A real kill -9 of the CLI while it writes rows, then the same command again."""
    import os
    import signal
    import time

    args = [sys.executable, "-m", "harness", "model=tiny-random", "method=mesa", "task=passkey",
            "task.lengths=[600]", "task.samples=300", "task.max_new_tokens=2", f"results_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    csv_rows = 0
    while time.time() < deadline and csv_rows < 5:
        time.sleep(0.2)
        files = list(tmp_path.glob("runs/passkey/tiny-random/*.csv"))
        csv_rows = files[0].read_text().count("\n") - 1 if files else 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ResultsFile(files[0], [], tasks=TASKS).read()
    assert 5 <= len(partial) < 300, "the kill should land mid-run"
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    frame = ResultsFile(files[0], [], tasks=TASKS).read()
    assert len(frame) == 300 and not frame.duplicated(["length", "sample"]).any()
    assert (frame["status"] == "ok").all()


def test_speed_task_rows(tmp_path):
    summary = run_job(config(tmp_path, "method=mesa", "task.lengths=[256,512]", "task.samples=1",
                             "task.decode_steps=2", task="speed"))
    frame = rows(summary)
    assert list(frame["status"]) == ["ok", "ok"] and (frame["metric"] == "prefill_s").all()
    assert (frame["prefill_s"] > 0).all() and (frame["decode_ms_per_token"] > 0).all()
    assert (frame["score"] == frame["prefill_s"]).all()
    assert frame["input_hash"].nunique() == 2


def test_attn_implementation_is_recorded_and_separates_results(tmp_path):
    sdpa = run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "task.samples=1"))
    eager = run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "task.samples=1",
                           "model.attn_implementation=eager"))
    assert sdpa.path != eager.path
    assert set(rows(sdpa)["attn_implementation"]) == {"sdpa"} and set(rows(eager)["attn_implementation"]) == {"eager"}
    # the default (sdpa) and the decoding backends leave the hash as it was before these keys existed,
    # so results written then stay resumable
    path, _ = results_path(config(tmp_path, "method=origin", "model.decode_sdpa_backends=[math]"))
    assert path == sdpa.path


@pytest.mark.parametrize("experiment,method,committed", [
    ("smollm2-speed-cpu", "origin", "origin-3b6049536b.csv"),
    ("smollm2-passkey-cpu", "mesa", "mesa-38cf94d29a.csv"),
    ("smollm2-ppl-cpu", "rerope", "rerope-b029236187.csv"),
    ("smollm2-passkey-depth-cpu", "mesa", "mesa-6a6ade9c96.csv"),
    ("smollm2-hidden-cpu", "origin", "origin-b524664c5b.csv"),
])
def test_the_committed_reproduction_stays_resumable(experiment, method, committed):
    """A config key added later must not move the committed rows' files (a hash change would recompute hours)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}", f"method={method}"])
    path, _ = results_path(cfg)
    assert path.name == committed
    assert (ROOT / "results" / "cpu-smollm2" / "runs" / cfg.task.name / "smollm2-135m" / committed).is_file()


# -- failed samples: kept, reported, retried on request ------------------------------------------
def _fail_sample(index_to_fail: int, message: str = "boom"):
    from tasks.passkey import PasskeyTask

    real = PasskeyTask.evaluate

    def evaluate(self, model, task_input):
        if task_input.info["key"] == self.build_input(300, index_to_fail).info["key"]:
            raise RuntimeError(message)
        return real(self, model, task_input)

    return evaluate


def test_a_failed_sample_is_retried_only_with_retry_failed_and_its_new_row_replaces_it(tmp_path, monkeypatch, capsys):
    from tasks.passkey import PasskeyTask

    monkeypatch.setattr(PasskeyTask, "evaluate", _fail_sample(1))
    first = run_job(config(tmp_path, "method=origin"))
    assert first.counts["error"] == 1 and first.counts["ok"] == 3
    assert "origin/passkey length 300 sample 1: error: boom" in capsys.readouterr().out  # why, on the console
    monkeypatch.undo()

    def no_model(*args, **kwargs):
        raise AssertionError("without retry_failed a failed row is kept: nothing to compute")

    monkeypatch.setattr("harness.models.load_model", no_model)
    again = run_job(config(tmp_path, "method=origin"))
    assert again.counts["skipped"] == 4 and again.failed_kept == 1
    from harness.summary import print_job_summary

    print_job_summary(again)
    printed = capsys.readouterr().out
    assert "1 of the rows already there failed" in printed and "retry_failed=true" in printed
    monkeypatch.undo()
    retried = run_job(config(tmp_path, "method=origin", "retry_failed=true"))
    assert retried.counts == {"ok": 1, "oom": 0, "error": 0, "skipped": 3, "busy": 0} and retried.failed_kept == 0
    # the file is append-only (the failed attempt stays on record), every reader sees one row per sample
    assert retried.path.read_text().count("\n") == 1 + 5
    frame = rows(retried)
    assert len(frame) == 4 and (frame["status"] == "ok").all() and not frame.duplicated(["length", "sample"]).any()
    assert len(collect(tmp_path, tmp_path / "all.csv", tasks=TASKS)) == 4
    from harness.results import read_rows

    assert len(read_rows(retried.path, tasks=TASKS)) == 4  # a job's own CSV given to compare or plots
    monkeypatch.setattr("harness.models.load_model", no_model)
    assert run_job(config(tmp_path, "method=origin", "retry_failed=true")).counts["skipped"] == 4


def test_a_retry_that_is_killed_leaves_the_failed_row_and_one_that_fails_again_replaces_it(tmp_path, monkeypatch):
    from tasks.passkey import PasskeyTask

    cfg = config(tmp_path, "method=origin", "task.lengths=[300]")
    monkeypatch.setattr(PasskeyTask, "evaluate", _fail_sample(0, "first"))
    path = run_job(cfg).path
    before = path.read_bytes()

    def killed(self, model, task_input):
        raise KeyboardInterrupt

    monkeypatch.setattr(PasskeyTask, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "retry_failed=true"))
    assert path.read_bytes() == before
    monkeypatch.setattr(PasskeyTask, "evaluate", _fail_sample(0, "second"))
    again = run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "retry_failed=true"))
    assert again.counts["error"] == 1
    frame = rows(again)
    assert len(frame) == 2 and list(frame.loc[frame["sample"] == 0, "message"]) == ["second"]


def test_a_whole_length_that_failed_is_replaced_by_its_retry(tmp_path, monkeypatch):
    from tasks.hidden import HiddenStateTask

    def hidden(*extra):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=["model=tiny-random", "task=hidden", "task.lengths=[200]",
                                                "task.positions=4", "task.top_dims=1", f"results_dir={tmp_path}",
                                                *extra])

    real = HiddenStateTask.evaluate_length
    monkeypatch.setattr(HiddenStateTask, "evaluate_length", lambda self, model, length: 1 / 0)
    failed = run_job(hidden())
    assert failed.counts["error"] == 1 and list(rows(failed)["sample"]) == [-1]
    monkeypatch.setattr(HiddenStateTask, "evaluate_length", real)
    assert run_job(hidden()).failed_kept == 1
    retried = run_job(hidden("retry_failed=true"))
    frame = rows(retried)
    assert retried.counts["ok"] == len(frame) > 0 and (frame["status"] == "ok").all() and -1 not in set(frame["sample"])


def test_retry_failed_must_be_a_boolean(tmp_path):
    with pytest.raises(HarnessError, match="^retry_failed must be true or false"):
        run_job(config(tmp_path, "method=origin", "retry_failed=maybe"))


def test_a_cpu_allocation_failure_is_recorded_as_oom(tmp_path, monkeypatch):
    import torch

    from tasks.passkey import PasskeyTask

    def allocate_too_much(self, model, task_input):
        torch.empty(1 << 60, dtype=torch.uint8)  # "DefaultCPUAllocator: can't allocate memory", a RuntimeError

    monkeypatch.setattr(PasskeyTask, "evaluate", allocate_too_much)
    summary = run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "task.samples=1"))
    assert summary.counts["oom"] == 1
    assert "can't allocate memory" in rows(summary)["message"].iloc[0]


def test_plan_with_retry_failed_lists_the_failed_samples_as_to_run(tmp_path, monkeypatch):
    from harness.plan import plan_job
    from tasks.passkey import PasskeyTask

    monkeypatch.setattr(PasskeyTask, "evaluate", _fail_sample(1))
    run_job(config(tmp_path, "method=origin"))
    monkeypatch.undo()
    assert sum(c.to_run for c in plan_job(config(tmp_path, "method=origin")).cells) == 0
    assert sum(c.to_run for c in plan_job(config(tmp_path, "method=origin", "retry_failed=true")).cells) == 1


# -- label: a job's name for its settings ---------------------------------------------------------
def test_a_label_gives_its_rows_a_series_and_a_file_of_their_own(tmp_path):
    from harness.analysis import series_by_settings

    plain = run_job(config(tmp_path, "method=origin", "task.samples=1"))
    labelled = run_job(config(tmp_path, "method=origin", "task.samples=1", "label=other-run"))
    assert labelled.path != plain.path  # another series never appends to (or resumes from) the plain file
    both = pd.concat([rows(plain), rows(labelled)], ignore_index=True)
    assert set(rows(plain)["label"].isna()) == {True} and set(rows(labelled)["label"]) == {"other-run"}
    assert set(series_by_settings(both)["method"]) == {"origin", "origin (other-run)"}
    # the same inputs, so compare pairs them
    assert set(rows(plain)["input_hash"]) == set(rows(labelled)["input_hash"])


def test_without_a_label_the_results_file_keeps_its_name(tmp_path):
    cfg = config(tmp_path, "method=mesa")
    assert results_path(config(tmp_path, "method=mesa", "label=null"))[0] == results_path(cfg)[0]


@pytest.mark.parametrize("label", ["mesa (x4)", "''", "a\nb"])
def test_a_label_that_cannot_name_a_series_is_one_line(tmp_path, label):
    from harness.job import check_label

    with pytest.raises(HarnessError, match="label must be"):
        check_label("" if label == "''" else label)


def test_a_file_written_before_the_label_column_is_appended_to(tmp_path):
    """Committed files have no ``label`` column: a rerun of their job must go on in them."""
    cfg = config(tmp_path, "method=origin", "task.samples=1")
    first = run_job(cfg)
    text = first.path.read_text().splitlines()
    header = text[0].split(",")
    drop = header.index("label")
    old = [",".join(f for i, f in enumerate(line.split(",")) if i != drop) for line in text]
    first.path.write_text("\n".join(old) + "\n")
    more = run_job(config(tmp_path, "method=origin", "task.samples=2"))
    assert more.counts["ok"] == 2 and "label" not in rows(more).columns and len(rows(more)) == 4

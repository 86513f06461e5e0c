"""Results stay whole under parallel jobs, kills, crashes, unwritable folders and full disks; sweeps are repeatable."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results import COMMON_COLUMNS, ResultsFile, collect, comparable
from harness.runner import run_job
from tasks import TASKS
from tests.test_runner import config

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "harness", "model=tiny-random", "task=passkey", "task.max_new_tokens=2"]


def job_file(results_dir: Path) -> Path:
    files = list(results_dir.glob("runs/passkey/tiny-random/*.csv"))
    assert len(files) == 1, files
    return files[0]


def wait_for_rows(results_dir: Path, at_least: int, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        files = list(results_dir.glob("runs/passkey/tiny-random/*.csv"))
        if files and files[0].read_text().count("\n") - 1 >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} rows after {timeout_s} s")


def new_ok_rows(stdout: str) -> int:
    line = next(out_line for out_line in stdout.splitlines() if out_line.startswith("rows: "))
    return int(line.split("(new: ")[1].split(" ok")[0])


# -- (a) parallel jobs ------------------------------------------------------------------------
def test_two_processes_writing_one_results_file_share_the_work(tmp_path):
    """The same job split by lengths (in opposite order) over two processes at once: no row lost or doubled."""
    common = [*CLI, "method=mesa", "task.samples=25", f"results_dir={tmp_path}"]
    procs = [subprocess.Popen([*common, f"task.lengths={lengths}", f"hydra.run.dir={tmp_path}/run{i}"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, lengths in enumerate(["[300,400]", "[400,300]"])]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    frame = ResultsFile(job_file(tmp_path), [], tasks=TASKS).read()
    assert len(frame) == 50 and not frame.duplicated(["length", "sample"]).any()
    computed = [new_ok_rows(o[0]) for o in outs]
    assert sum(computed) == 50 and min(computed) > 0, computed  # each did part, together exactly all


def test_a_sample_claimed_by_another_live_process_is_left_to_it(tmp_path):
    cfg = config(tmp_path, "method=origin")
    first = run_job(config(tmp_path, "method=origin", "task.lengths=[300]", "task.samples=1"))  # creates the file
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from harness.results import ResultsFile
        from tasks import TASKS
        with ResultsFile(sys.argv[1], [], tasks=TASKS) as results, results.claim(400, 1) as state:
            print(state == "mine", flush=True)
            time.sleep(120)
    """), str(first.path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        summary = run_job(cfg)
        assert summary.counts == {"ok": 2, "oom": 0, "error": 0, "skipped": 1, "busy": 1}
    finally:
        holder.kill()  # a dead process's claims vanish with it
        holder.wait()
    again = run_job(cfg)
    assert again.counts["ok"] == 1
    frame = ResultsFile(first.path, [], tasks=TASKS).read()
    assert sorted(zip(frame["length"], frame["sample"])) == [(300, 0), (300, 1), (400, 0), (400, 1)]


# -- (b) kills --------------------------------------------------------------------------------
def test_a_worker_killed_mid_cell_while_another_runs_then_rerun_completes(tmp_path):
    common = [*CLI, "method=mesa", "task.lengths=[600]", "task.samples=30", f"results_dir={tmp_path}"]
    victim = subprocess.Popen([*common, f"hydra.run.dir={tmp_path}/a"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    survivor = subprocess.Popen([*common, f"hydra.run.dir={tmp_path}/b"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    wait_for_rows(tmp_path, 4)
    os.kill(victim.pid, signal.SIGKILL)  # mid-cell: it holds a claim and may be mid-write
    victim.wait()
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err[-2000:]
    rerun = subprocess.run([*common, f"hydra.run.dir={tmp_path}/c"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    frame = ResultsFile(job_file(tmp_path), [], tasks=TASKS).read()
    assert len(frame) == 30 and not frame.duplicated(["length", "sample"]).any()
    assert (frame["status"] == "ok").all()


def test_ctrl_c_is_one_line_and_exit_130_and_the_rerun_goes_on(tmp_path):
    """It used to be a 128-line traceback and exit 1, the status of a failed sample."""
    args = [*CLI, "method=origin", "task.lengths=[600]", "task.samples=200", f"results_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(tmp_path, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted: the rows written so far are kept; rerun the same command "
                                            "to go on")
    partial = ResultsFile(job_file(tmp_path), [], tasks=TASKS).read()
    assert 3 <= len(partial) < 200 and (partial["status"] == "ok").all()  # the interrupted sample left no row


def test_a_torn_line_from_a_dead_writer_is_cut_before_the_next_row(tmp_path):
    path = tmp_path / "job.csv"
    row = {c: "x" for c in COMMON_COLUMNS} | {"length": 1, "sample": 0, "status": "ok"}
    with ResultsFile(path, COMMON_COLUMNS, tasks=TASKS) as results:
        results.append(row)
        with open(path, "a") as other_writer:  # a process that died mid-line
            other_writer.write("1,1,ok,half a ro")
        results.append(row | {"sample": 2})
    frame = ResultsFile(path, [], tasks=TASKS).read()
    assert list(frame["sample"]) == [0, 2]


# -- (c) repeatable -----------------------------------------------------------------------------
def test_the_same_sweep_twice_gives_identical_rows_apart_from_timings(tmp_path):
    jobs = [("passkey", method, []) for method in ("origin", "dynamic-ntk", "rerope", "leaky-rerope", "mesa")]
    jobs += [("longeval", "mesa", ["task.lengths=[600]", "task.max_new_tokens=3"]),
             ("speed", "mesa", ["task.lengths=[256]", "task.decode_steps=1"])]
    for run in ("a", "b"):
        for task, method, extra in jobs:
            run_job(config(tmp_path / run, f"method={method}", "task.samples=1", *extra, task=task))
    a = comparable(collect(tmp_path / "a", tmp_path / "a.csv", tasks=TASKS), tasks=TASKS)
    b = comparable(collect(tmp_path / "b", tmp_path / "b.csv", tasks=TASKS), tasks=TASKS)
    assert len(a) == 5 * 2 + 1 + 1 and (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a, b)
    assert "seconds" not in a.columns and "peak_mb" not in a.columns
    assert a.loc[a["task"] == "speed", "score"].isna().all() and a.loc[a["task"] != "speed", "score"].notna().all()


# -- (d) failures do not stop a sweep ---------------------------------------------------------
def test_a_crashing_job_does_not_stop_the_sweep(tmp_path):
    done = subprocess.run([*CLI[:3], "-m", *CLI[3:], "model.architecture.vocab_size=-1,256", "task.lengths=[300]",
                           "task.samples=1", f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "sweep: 2 jobs, 1 new ok rows, 0 failed samples, 1 jobs not run" in done.stdout
    assert "vocab_size=-1" in done.stdout and "RuntimeError" in done.stdout
    assert len(ResultsFile(job_file(tmp_path), [], tasks=TASKS).read()) == 1


# -- error paths ------------------------------------------------------------------------------
def test_an_unwritable_results_dir_is_refused_before_loading_the_model(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def no_model(*args, **kwargs):
        raise AssertionError("must fail before loading the model")

    monkeypatch.setattr("harness.models.load_model", no_model)
    with pytest.raises(HarnessError, match="is not writable .* set results_dir="):
        run_job(config(blocker / "results", "method=origin"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_results_dir_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(HarnessError, match="not writable"):
            run_job(config(tmp_path / "results", "method=origin"))
    finally:
        tmp_path.chmod(0o700)


def test_a_finished_job_in_a_read_only_results_dir_has_nothing_to_do(tmp_path, monkeypatch):
    """Only a job with work left needs to write (root ignores permissions: the check is simulated)."""
    finished = run_job(config(tmp_path, "method=origin"))

    def read_only(folder):
        raise HarnessError(f"results directory {folder} is not writable (Read-only file system); set results_dir=...")

    monkeypatch.setattr("harness.runner.check_writable", read_only)
    again = run_job(config(tmp_path, "method=origin"))
    assert again.path == finished.path and again.counts["skipped"] == 4 and again.counts["ok"] == 0
    with pytest.raises(HarnessError, match="not writable"):
        run_job(config(tmp_path, "method=origin", "task.samples=3"))


def test_unwritable_results_dir_on_the_command_line_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    bad = subprocess.run([*CLI, "task.lengths=[300]", "task.samples=1", f"results_dir={tmp_path}/a-file/results",
                          f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: results directory ")
    assert "Traceback" not in bad.stderr


def test_a_disk_that_fills_up_mid_row_keeps_every_whole_row(tmp_path, monkeypatch):
    cfg = config(tmp_path, "method=origin")
    real_write, calls = os.write, {"n": 0}

    def filling_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 4:  # header, two rows, then the disk fills halfway through the third row
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("harness.results.os.write", filling_write)
    with pytest.raises(HarnessError, match="No space left on device.*rows already written are kept"):
        run_job(cfg)
    path = job_file(tmp_path)
    assert path.read_text().endswith("\n")
    assert len(ResultsFile(path, [], tasks=TASKS).read()) == 2
    monkeypatch.undo()
    again = run_job(cfg)  # space freed: the same command goes on
    frame = ResultsFile(path, [], tasks=TASKS).read()
    assert again.counts["ok"] == 2 and len(frame) == 4 and not frame.duplicated(["length", "sample"]).any()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_a_real_file_size_limit_mid_write(tmp_path):
    """The kernel cuts a write short at the limit (as on a full disk); the partial row is rolled back."""
    script = textwrap.dedent("""
        import resource, signal, sys
        from harness.errors import HarnessError
        from harness.results import COMMON_COLUMNS, ResultsFile
        from tasks import TASKS
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
        row = {c: "v" * 20 for c in COMMON_COLUMNS} | {"length": 8, "status": "ok"}
        written = 0
        try:
            with ResultsFile(sys.argv[1], COMMON_COLUMNS, tasks=TASKS) as results:
                for sample in range(100):
                    results.append(row | {"sample": sample})
                    written += 1
        except HarnessError as error:
            print(written, error)
    """)
    path = tmp_path / "job.csv"
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    written, message = out.split(" ", 1)
    assert int(written) >= 1 and "rows already written are kept" in message, out
    assert path.read_text().endswith("\n") and path.stat().st_size <= 1500
    frame = ResultsFile(path, [], tasks=TASKS).read()
    assert list(frame["sample"]) == list(range(int(written)))

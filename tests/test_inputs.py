"""Bad input is one line on stderr and exit status 2, with nothing written or damaged; input a user
naturally types (a single length) is accepted; commands started outside the checkout write only
under their results_dir."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.choices import unknown_choice_message, unknown_key_message
from harness.devices import check_device
from harness.errors import HarnessError
from harness.job import check_lengths
from harness.plan import plan_job
from harness.results import ResultsFile
from harness.runner import run_job
from harness.summary import print_job_summary
from tasks import TASKS
from tests.test_runner import config

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def harness_cli(*args, cwd):
    """``python -m harness`` started in ``cwd`` with this checkout's code (as an installed package would be)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def no_model(*args, **kwargs):
    raise AssertionError("bad input must be refused before loading the model")


# -- devices ------------------------------------------------------------------------------------
def test_check_device():
    assert check_device("cpu") == "cpu"
    assert check_device("cuda", cuda_count=lambda: 1) == "cuda"
    assert check_device("cuda:1", cuda_count=lambda: 2) == "cuda:1"
    with pytest.raises(HarnessError, match="'gpu' is not a device .* use cpu, cuda, cuda:N or mps"):
        check_device("gpu")
    for bad in ("", "cuda:x", "meta", "cpu:3"):
        with pytest.raises(HarnessError, match="is not a device"):
            check_device(bad)
    with pytest.raises(HarnessError, match="device='cuda'.*use device=cpu"):
        check_device("cuda", cuda_count=lambda: 0)
    with pytest.raises(HarnessError, match=r"device='cuda:1', but only 1 CUDA GPU\(s\) are visible \(cuda:0..cuda:0\)"):
        check_device("cuda:1", cuda_count=lambda: 1)
    with pytest.raises(HarnessError, match="no MPS"):
        check_device("mps", mps_available=lambda: False)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_run_refuses_a_device_this_machine_lacks_and_plan_plans_for_it(tmp_path, monkeypatch, device):
    """A sweep for GPUs is planned where it is prepared (a cluster's login node has no CUDA)."""
    monkeypatch.setattr("harness.models.load_model", no_model)
    with pytest.raises(HarnessError, match=f"device={device!r}"):
        run_job(config(tmp_path, "method=origin", f"device={device}"))
    assert not list(tmp_path.iterdir())
    plan = plan_job(config(tmp_path, "method=origin", f"device={device}"))
    assert plan.to_run == 4 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:3"])
def test_run_and_plan_refuse_a_device_name_that_is_no_device(tmp_path, monkeypatch, device):
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=f"device={device!r} is not a device"):
            job(config(tmp_path, "method=origin", f"device={device}"))
    assert not list(tmp_path.iterdir())


# -- lengths, samples, seed, dtype --------------------------------------------------------------
def test_a_single_length_is_a_list_of_one():
    assert check_lengths(512) == [512]
    assert check_lengths([512, 1024, 512]) == [512, 1024]  # a repeated length is one length
    with pytest.raises(HarnessError, match="task.lengths is empty"):
        check_lengths([])


def test_task_lengths_without_brackets_runs(tmp_path):
    summary = run_job(config(tmp_path, "method=origin", "task.lengths=300", "task.samples=1"))
    assert summary.counts["ok"] == 1
    assert list(ResultsFile(summary.path, [], tasks=TASKS).read()["length"]) == [300]


@pytest.mark.parametrize("override,match", [
    ("task.lengths=[]", "task.lengths is empty"),
    ("seed=abc", "^seed must be an integer, got 'abc'$"),
    ("seed=1.5", "^seed must be an integer"),
    ("dtype=float64", "^dtype must be one of float32, float16, bfloat16"),
    ("task.samples=0", "^task.samples must be a positive integer"),
])
def test_bad_job_settings_are_refused_by_run_and_plan(tmp_path, monkeypatch, override, match):
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=match):
            job(config(tmp_path, "method=origin", override))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("task,override,match", [
    ("speed", "task.repeats=0", r"^task.repeats must be a positive integer, got 0$"),
    ("speed", "task.repeats=1.5", r"^task.repeats must be a positive integer, got 1.5$"),
    ("speed", "task.decode_steps=-1", r"^task.decode_steps must be a non-negative integer, got -1$"),
    ("speed", "task.warmup_tokens=0", r"^task.warmup_tokens must be a positive integer"),
    ("passkey", "task.max_new_tokens=0", r"^task.max_new_tokens must be a positive integer, got 0$"),
    ("longeval", "task.max_new_tokens=0", r"^task.max_new_tokens must be a positive integer"),
    ("govreport", "task.max_new_tokens=-2", r"^task.max_new_tokens must be a positive integer"),
])
def test_bad_task_parameters_are_refused_before_anything_runs(tmp_path, monkeypatch, task, override, match):
    """They used to be a failed row per sample (repeats=0: an UnboundLocalError; max_new_tokens=0),
    or rows of NaN (decode_steps=-1)."""
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=match):
            job(config(tmp_path, "method=origin", override, task=task))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value,got", [("null", "got null"), ("''", "got an empty value"),
                                       ("' '", "got an empty value")])
def test_results_dir_must_name_a_folder(tmp_path, monkeypatch, value, got):
    """null used to write ./None/runs/..., and an empty value ./runs/..."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("harness.models.load_model", no_model)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=f"^results_dir must be a folder, e.g. results_dir=results .*; {got}$"):
            job(config(tmp_path, "method=origin", f"results_dir={value}"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["results_dir=null"], ["results_dir="],
                                  ["-m", "method=origin,mesa", "results_dir=null"], ["-m", "results_dir=res,null"]],
                         ids=["null", "empty", "sweep-null", "swept-null"])
def test_results_dir_null_or_empty_on_the_command_line(tmp_path, args):
    done = harness_cli("model=tiny-random", "task.samples=1", "task.lengths=300", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: results_dir must be a folder") and len(done.stderr.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_a_length_the_task_cannot_build_leaves_no_folders(tmp_path):
    with pytest.raises(HarnessError, match="cannot build length 20"):
        run_job(config(tmp_path / "results", "method=origin", "task.lengths=[300,20]"))
    assert not (tmp_path / "results").exists()


# -- corrupted results files --------------------------------------------------------------------
GOOD_HEADER = b"model,method,task,length,sample,status,score\n"


@pytest.mark.parametrize("content", [
    GOOD_HEADER + b"m,origin,passkey,300,0,ok,1.0\nm,origin,passkey,300,1,ok,\xff1.0\n",  # one non-UTF-8 byte
    bytes(range(256)) * 8,  # binary
    GOOD_HEADER + b"m,origin,passkey,300,0,ok,1.0\nm,origin,passkey,abc,1,ok,1.0\n",  # length not an integer
    GOOD_HEADER + b"m,origin,passkey,300.5,0,ok,1.0\n",
    GOOD_HEADER + b"m,origin,passkey,300,,ok,1.0\n",  # no sample
    GOOD_HEADER[:-1] + b",note\nm,origin,passkey,300,0,ok,1.0,mine\n",  # a column the harness does not write
    GOOD_HEADER + b"0,m,origin,passkey,300,0,ok,1.0\n1,m,origin,passkey,300,1,ok,1.0\n",  # a field the header lacks
    b"," + GOOD_HEADER + b"0,m,origin,passkey,300,0,ok,1.0\n",  # pandas' index written as an unnamed column
], ids=["non-utf8-byte", "binary", "length-abc", "length-300.5", "sample-missing", "extra-column", "extra-field",
        "index-column"])
def test_a_corrupted_results_file_is_one_line_and_left_alone(tmp_path, content):
    cfg = config(tmp_path, "method=origin")
    from harness.job import results_path

    path = results_path(cfg)[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    for job in (run_job, plan_job):
        with pytest.raises(HarnessError, match=r"^results file .* is corrupted \(.*\); move it away and rerun$"):
            job(cfg)
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# -- unknown config group options ---------------------------------------------------------------
def test_unknown_group_options_name_the_choices():
    message = unknown_choice_message(["method=mesaa"])
    choices = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml"))
    assert message == f"error: unknown method 'mesaa'; choose from: {', '.join(choices)}"
    assert unknown_choice_message(["-m", "method=origin,mesaa"]).startswith("error: unknown method 'mesaa'")
    assert "choose from: " in unknown_choice_message(["task=nosuch"])
    assert "llama2-7b" in unknown_choice_message(["model=nosuch"])
    assert "paper-gpu" in unknown_choice_message(["+experiment=nosuch"])
    for fine in (["method=mesa", "task=ppl", "model=tiny-random"],
                 ["-m", "method=origin,mesa", "+experiment=paper-gpu"],
                 ["method.name=mesaa"], ["method=choice(origin,mesa)"], ["--cfg", "job"], ["-cd", "/x", "method=x"]):
        assert unknown_choice_message(fine) is None, fine


def test_unknown_keys_are_one_line():
    assert unknown_key_message(["task.nosuch=1"]) == ("error: task.nosuch is not a setting here (see them with --cfg "
                                                      "job); check the spelling, or add a new key with +task.nosuch=1")
    # inside a sweep, after a preset, or with Hydra's own flags around it
    for argv in (["-m", "method=origin,mesa", "model.nosuch=2"],
                 ["+experiment=smollm2-passkey-depth-cpu", "task.nosuch=1"],
                 ["--cfg", "job", "method=glob(*)", "method.nosuch=1"]):
        assert unknown_key_message(argv).startswith("error: " + argv[-1].split("=")[0] + " is not a setting"), argv
    for fine in (["task.samples=3"], ["-m", "method=glob(*)", "task.samples=range(1,3)"], ["+task.newkey=1"],
                 ["task=hidden", "task.dims={5:[1]}"], ["+experiment=smollm2-passkey-depth-cpu", "~task.depths"],
                 ["method=mesa", "method.stair_width=40"], ["task.lengths=[1,"], ["-cd", "/x", "task.nosuch=1"]):
        assert unknown_key_message(fine) is None, fine


# -- the CLI: one line, exit 2, nothing written (started outside the checkout) ------------------
@pytest.mark.parametrize("args,first_words", [
    (["method=mesaa"], "error: unknown method 'mesaa'; choose from: "),
    (["task=nosuch"], "error: unknown task 'nosuch'; choose from: "),
    (["-m", "model=tiny-random,nosuch"], "error: unknown model 'nosuch'; choose from: "),
    (["device=cuda"] if NO_CUDA else ["device=cuda:99"], "error: device='cuda"),
    (["plan=true", "device=cuda:x"], "error: device='cuda:x' is not a device"),
    (["device=gpu"], "error: device='gpu' is not a device"),
    (["seed=abc"], "error: seed must be an integer"),
    (["task.lengths=[]"], "error: task.lengths is empty"),
    (["task.nosuch=1"], "error: task.nosuch is not a setting here"),
    (["task=speed", "task.repeats=0"], "error: task.repeats must be a positive integer, got 0"),
], ids=["method", "task", "model-in-sweep", "cuda", "plan-typo", "gpu", "seed", "no-lengths", "unknown-key",
        "speed-repeats"])
def test_bad_input_on_the_command_line(tmp_path, args, first_words):
    done = harness_cli("model=tiny-random", *args, "results_dir=res", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(first_words), done.stderr
    assert not list(tmp_path.iterdir())  # no results folder, no Hydra outputs/ or multirun/


@pytest.mark.parametrize("args", [["task.lengths=[1,"], ["hydra/launcher=nosuch"],
                                  ["-m", "method=origin", "task.lengths=[1,"], ["hydra.job.chdir=maybe"]],
                         ids=["unparsable", "no-launcher", "sweep", "bad-hydra-value"])
def test_what_hydra_itself_refuses_is_bad_input_too(tmp_path, args):
    """Hydra says why (several lines) and used to exit with 1, the status of a failed sample."""
    done = harness_cli("model=tiny-random", *args, "results_dir=res", cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def test_a_config_value_that_cannot_be_resolved_is_one_line(tmp_path):
    done = harness_cli("model=tiny-random", "model.train_length=${nosuch}", "plan=true", "results_dir=res",
                       cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == "error: config: Interpolation key 'nosuch' not found (model.train_length)\n"


def test_a_sweep_where_every_job_is_refused_exits_2_and_leaves_nothing(tmp_path):
    done = harness_cli("-m", "model=tiny-random", "method=origin,mesa", "task.lengths=[5]", "results_dir=res",
                       cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sweep: 2 jobs, 0 new ok rows, 0 failed samples, 2 jobs not run" in done.stdout
    assert "plan:" not in done.stdout
    assert done.stderr.count("error: task 'passkey' cannot build length 5") == 2
    assert not list(tmp_path.iterdir())


def _checkout_state() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "__pycache__" not in line and ".pytest_cache" not in line}


def test_commands_started_elsewhere_write_only_under_their_results_dir(tmp_path):
    before = _checkout_state()
    common = ["model=tiny-random", "task.samples=1", "task.max_new_tokens=2", "results_dir=myres"]
    single = harness_cli(*common, "task.lengths=300", "method=origin", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    rows_line = next(line for line in single.stdout.splitlines() if line.startswith("rows: "))
    assert rows_line.startswith(f"rows: {tmp_path / 'myres' / 'runs' / 'passkey' / 'tiny-random'}")
    sweep = harness_cli("-m", *common, "task.lengths=[300]", "method=origin,mesa", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "sweep: 2 jobs, 1 new ok rows" in sweep.stdout
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for module, args in (("harness.collect", ["--results", "myres"]), ("plots", ["--results", "myres/all.csv"])):
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["myres"]
    assert sorted(p.name for p in (tmp_path / "myres").iterdir()) == ["all.csv", "figures", "multirun", "runs"]
    assert list((tmp_path / "myres" / "multirun").glob("*/*/multirun.yaml"))  # the sweep's Hydra folder
    assert (tmp_path / "myres" / "figures" / "passkey_accuracy.png").is_file()
    assert _checkout_state() == before


# -- the run summary ------------------------------------------------------------------------------
def test_the_summary_shows_only_what_this_run_asked_for(tmp_path, capsys):
    run_job(config(tmp_path, "method=origin", "task.lengths=[300,400]", "task.samples=2"))
    capsys.readouterr()
    print_job_summary(run_job(config(tmp_path, "method=origin", "task.lengths=[400]", "task.samples=1")))
    out = capsys.readouterr().out.splitlines()
    assert "already there: 1" in out[0]
    table = out[1:]
    lengths = [line.split()[0] for line in table if line.split() and line.split()[0].isdigit()]
    assert lengths == ["400"]
    assert table[-1].split()[1] == "1"  # one sample of 400, not the file's two

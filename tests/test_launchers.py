"""Hydra launcher plugins: a sweep gives the same rows (and the same summary and exit status)
with parallel processes (joblib) and submitit's local executor as with the default launcher; our
launcher configs compose; a missing plugin is one line on stderr and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.launchers import check_launcher_plugins, missing_plugin_message, plugin_for, requested_launchers
from harness.results import collect
from tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
METHODS = "origin,mesa,rerope"
VARYING = ["seconds", "timestamp"]  # wall-clock time; everything else in a row is a function of the config
SORT = ["model", "method", "task", "length", "sample"]


def harness_cli(*args, **env):
    # Launcher workers (loky processes, submitit's job subprocesses) inherit this environment.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def sweep(results, *launcher, samples="2"):
    """The same sweep, with the given launcher overrides (none: Hydra's basic launcher).
    samples="2,0" adds three cells that are refused (task.samples must be positive): not run, no rows."""
    return harness_cli("-m", *launcher, "model=tiny-random", f"method={METHODS}", "task=passkey",
                       "task.lengths=[300]", f"task.samples={samples}", "task.max_new_tokens=2",
                       f"results_dir={results}", f"hydra.sweep.dir={results}/multirun")


def table(results: Path) -> pd.DataFrame:
    frame = collect(results, results / "all.csv", tasks=TASKS)
    return frame.drop(columns=VARYING).sort_values(SORT).reset_index(drop=True)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    results = tmp_path_factory.mktemp("sequential")
    done = sweep(results, samples="2,0")
    assert done.returncode == 1, done.stderr
    assert "sweep: 6 jobs, 6 new ok rows, 0 failed samples, 3 jobs not run" in done.stdout
    return table(results)


def check_same_rows(results: Path, sequential: pd.DataFrame) -> None:
    rows = table(results)
    assert len(rows) == 6 and (rows["status"] == "ok").all()
    assert sorted(rows["method"].unique()) == sorted(METHODS.split(","))
    pd.testing.assert_frame_equal(rows, sequential)  # git_rev, versions, input_hash, answers: all equal


def test_joblib_local_parallel_gives_the_sequential_rows(tmp_path, sequential):
    # local-parallel is our config: joblib, loky processes, n_jobs 2
    done = sweep(tmp_path, "hydra/launcher=local-parallel", samples="2,0")
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in done.stdout  # it really ran through joblib (Hydra logs to stdout)
    assert done.returncode == 1, done.stderr  # the refused cells set the exit status, as without a launcher
    assert "sweep: 6 jobs, 6 new ok rows, 0 failed samples, 3 jobs not run" in done.stdout
    assert done.stdout.count("not run: model=tiny-random") == 3
    assert done.stderr.count("error: task.samples must be a positive integer, got 0") == 3
    assert "friendly reminder" not in done.stderr  # the workers are as quiet as main() makes this process
    check_same_rows(tmp_path, sequential)
    assert not (tmp_path / "multirun" / ".harness-jobs").exists()  # the workers' records are read and removed


def test_submitit_local_gives_the_sequential_rows(tmp_path, sequential):
    done = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    assert done.returncode == 0, done.stderr
    assert "Submitit 'local' sweep output dir" in done.stdout
    assert "sweep: 3 jobs, 6 new ok rows, 0 failed samples, 0 jobs not run" in done.stdout
    check_same_rows(tmp_path, sequential)
    logs = list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 3  # submitit_folder defaults under the sweep dir: one job = one cell


# -- our launcher configs -----------------------------------------------------------------------
def launcher_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_our_launcher_configs_compose_with_their_settings():
    ours = sorted(p.stem for p in (ROOT / "conf" / "hydra" / "launcher").glob("*.yaml"))
    assert ours == ["local-parallel", "slurm-gpu"]

    local = launcher_config("local-parallel")
    assert local._target_.endswith("JoblibLauncher")
    assert (local.n_jobs, local.backend) == (2, "loky")

    slurm = launcher_config("slurm-gpu", "hydra.launcher.partition=gpu")
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert slurm.partition == "gpu"
    assert (slurm.nodes, slurm.tasks_per_node, slurm.gpus_per_node, slurm.cpus_per_task) == (1, 1, 1, 8)
    assert (slurm.mem_gb, slurm.timeout_min, slurm.max_num_timeout) == (64, 240, 3)
    assert OmegaConf.to_container(slurm)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert launcher_config("slurm-gpu").partition is None  # the user names the cluster's partition


def test_the_cli_composes_a_launcher_config():
    shown = harness_cli("hydra/launcher=slurm-gpu", "--cfg", "hydra", "-p", "hydra.launcher")
    assert shown.returncode == 0, shown.stderr
    assert "gpus_per_node: 1" in shown.stdout and "SlurmLauncher" in shown.stdout


# -- a missing plugin ---------------------------------------------------------------------------
def test_launcher_names_map_to_their_plugins():
    assert requested_launchers(["-m", "hydra/launcher=joblib", "method=a,b", "hydra.launcher.n_jobs=2"]) == ["joblib"]
    assert requested_launchers(["+hydra/launcher='submitit_local'"]) == ["submitit_local"]
    assert requested_launchers(["method=mesa", "hydra.launcher.n_jobs=2"]) == []
    assert plugin_for("joblib")[1] == "hydra-joblib-launcher"
    assert plugin_for("submitit_slurm")[1] == plugin_for("submitit_local")[1] == "hydra-submitit-launcher"
    assert plugin_for("ray_aws")[1] == "hydra-ray-launcher" and plugin_for("rq")[1] == "hydra-rq-launcher"
    assert plugin_for("local-parallel") == plugin_for("joblib")  # ours: whatever plugin config they extend
    assert plugin_for("slurm-gpu") == plugin_for("submitit_slurm")
    assert plugin_for("basic") is None and plugin_for("no-such-launcher") is None  # Hydra's own error


def test_missing_plugin_message():
    def nothing_installed(name):
        return None

    message = missing_plugin_message(["-m", "hydra/launcher=joblib"], find_spec=nothing_installed)
    assert message == ("error: launcher 'joblib' needs the hydra-joblib-launcher plugin: "
                       "pip install -e '.[launchers]' (or pip install hydra-joblib-launcher)")
    slurm = missing_plugin_message(["hydra/launcher=slurm-gpu"], nothing_installed)
    assert slurm.startswith("error: launcher 'slurm-gpu' needs the hydra-submitit-launcher plugin")
    assert missing_plugin_message(["hydra/launcher=ray"], nothing_installed).endswith(
        ": pip install hydra-ray-launcher")
    assert missing_plugin_message(["hydra/launcher=joblib"]) is None  # installed here (the dev extra)
    assert missing_plugin_message(["hydra/launcher=nope"], nothing_installed) is None
    check_launcher_plugins(["method=mesa"])  # no launcher asked for: nothing to check


# The CLI with the joblib plugin made unimportable, as if it were not installed.
BLOCKED = """
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.hydra_joblib_launcher"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Missing())
sys.argv = ["harness", *sys.argv[1:]]
runpy.run_module("harness", run_name="__main__")
"""


def test_the_cli_says_in_one_line_which_plugin_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-c", BLOCKED, "-m", "hydra/launcher=joblib", "model=tiny-random",
                           f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: launcher 'joblib' needs the hydra-joblib-launcher plugin: "
                                   "pip install -e '.[launchers]' (or pip install hydra-joblib-launcher)")
    assert not (tmp_path / "multirun").exists()

"""Methods and tasks describe themselves: their configs match their classes, and no other file
names them. A method defined only here (a module and a config in tmp_path) shows up in plan mode,
results, figures, the API and --help without any other file changing."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from harness.errors import HarnessError
from harness.methods import METHODS, apply_method, method_names, method_parameters, method_settings
from tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
METHOD_CONFIGS = sorted((ROOT / "conf" / "method").glob("*.yaml"))
TASK_CONFIGS = sorted((ROOT / "conf" / "task").glob("*.yaml"))


# -- each config matches its class ---------------------------------------------------------------
@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_a_method_config_lists_its_class_parameters_with_their_defaults(path):
    cfg = OmegaConf.load(path)
    cls = get_class(cfg._target_)
    assert cls.name == cfg.name == path.stem and METHODS[cls.name] is cls
    _, params = method_settings(cfg)
    defaults = cls.parameters()
    assert set(params) == set(defaults), f"{path.name} and {cls.__qualname__}.__init__ differ"
    assert params.pop("train_length") is None  # null: the model's training length
    assert params == {k: v for k, v in defaults.items() if k != "train_length"}


def test_every_method_module_registers_its_method_and_has_a_config():
    assert set(METHODS) == {p.stem for p in METHOD_CONFIGS}
    assert method_names()[0] == "origin"  # the unchanged model comes first in tables and legends
    for cls in METHODS.values():
        assert cls.cached_decoding in ("exact", "approximate") and cls.label and cls.color and cls.marker


@pytest.mark.parametrize("path", TASK_CONFIGS, ids=lambda p: p.stem)
def test_a_task_config_names_its_registered_class(path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={path.stem}"]).task
    cls = get_class(cfg._target_)
    assert TASKS[cfg.name] is cls and cls.length_unit in ("tokens", "lines")
    assert set(cls.timing_columns) <= set(cls.columns)


def test_a_config_key_the_method_does_not_take_is_one_line(tmp_path):
    from harness.plan import plan_job
    from tests.test_runner import config

    with pytest.raises(HarnessError, match="^unknown parameter.*windw for method 'rerope'; accepted: "):
        plan_job(config(tmp_path, "method=rerope", "+method.windw=3"))


# -- no other file names a method or a task ------------------------------------------------------
def _names_in_code(path: Path) -> set[str]:
    """String constants in a Python file's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


@pytest.mark.parametrize("kind,registry", [("method", METHODS), ("task", TASKS)])
def test_no_file_but_its_own_module_names_a_method_or_a_task(kind, registry):
    code = [p for folder in ("harness", "plots", "tasks", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    own = {name: Path(sys.modules[cls.__module__].__file__).resolve() for name, cls in registry.items()}
    for path in code:
        named = _names_in_code(path) & set(registry)
        assert all(own[name] == path.resolve() for name in named), f"{path.relative_to(ROOT)} names {kind}s {named}"


@pytest.mark.parametrize("base,kind,registry", [
    ("harness.methods.method:Method", "method", METHODS), ("tasks.base:Task", "task", TASKS)])
def test_a_second_class_with_a_registered_name_is_refused(base, kind, registry):
    """One check for both registries (harness.registry.register): a name means one class."""
    module, _, name = base.partition(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    taken = next(iter(registry))
    before = dict(registry)
    facts = dict(label="Clash", color="#000001", marker="p", order=99) if kind == "method" else {}
    with pytest.raises(TypeError, match=f"two {kind} classes are named '{taken}'"):
        type("Clash", (cls,), dict(name=taken, __module__=__name__, **facts))
    assert registry == before


def test_hash_neutral_parameters_are_the_methods_own_with_their_defaults():
    """A method names its hash-neutral parameters; their neutral values are its signature's defaults
    (stated once), and a name that is not a parameter with a default is refused at definition."""
    from harness.methods.method import Method

    for cls in METHODS.values():
        defaults = cls.parameters()
        assert cls.hash_neutral_defaults == {p: defaults[p] for p in cls.hash_neutral}
    facts = dict(label="Neutral", color="#000002", marker="p", order=99, attach=lambda self, model: None,
                 hash_neutral=("strength",), __module__=__name__)
    with pytest.raises(TypeError, match="hash_neutral names strength"):
        type("Neutral", (Method,), dict(name="neutral-test", **facts))
    assert "neutral-test" not in METHODS


# -- a method defined only in this test ----------------------------------------------------------
THROWAWAY_MODULE = '''
from harness.methods.method import Method


class Throwaway(Method):
    """The stock model under another name, with one parameter and a memory fact of its own."""

    name = "throwaway"
    label = "Throwaway"
    color = "#123456"
    marker = "p"
    order = 99
    rope_kinds = None
    sliding_window = True
    decode_key_copies = 3

    def __init__(self, train_length: int, strength: int = 7):
        super().__init__(train_length)
        self.strength = strength

    def attach(self, model):
        model.throwaway_strength = self.strength

        def undo():
            del model.throwaway_strength

        model._harness_undo = undo
'''
THROWAWAY_CONFIG = """
_target_: throwaway_method.Throwaway
name: throwaway
train_length: null
strength: 7
"""


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """A method module and its config in tmp_path, importable; unregistered afterwards."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "throwaway_method.py").write_text(textwrap.dedent(THROWAWAY_MODULE))
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "throwaway.yaml").write_text(THROWAWAY_CONFIG)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield tmp_path
    METHODS.pop("throwaway", None)
    sys.modules.pop("throwaway_method", None)


def _with_throwaway(cfg, conf_dir: Path):
    with open_dict(cfg):
        cfg.method = OmegaConf.load(conf_dir / "method" / "throwaway.yaml")
    return cfg


def test_a_new_method_is_one_module_and_one_config(throwaway, tmp_path):
    import pandas as pd

    from harness.plan import plan_job
    from harness.results import ResultsFile, collect
    from harness.runner import run_job
    from plots.figures import build_all, methods_in, style
    from tests.conftest import tiny_model
    from tests.test_runner import config

    results = tmp_path / "results"
    # plan mode builds it from its config and reads its memory facts: 3 key copies while decoding
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=llama2-7b", "task.lengths=[16384]", f"results_dir={results}"])
    plan = plan_job(_with_throwaway(cfg, throwaway / "conf"))
    assert "method=throwaway" in plan.job and plan.path.name.startswith("throwaway-")
    memory = plan.cells[0].memory
    assert memory["work"] == pytest.approx(3 / 2 * memory["kv_cache"], rel=1e-3)  # K is half of the KV cache

    # the runner builds and applies it; its rows and their parameters go where every method's go
    summary = run_job(_with_throwaway(config(results, "method=origin", "task.lengths=[300]", "task.samples=1"),
                                      throwaway / "conf"))
    rows = ResultsFile(summary.path, [], tasks=TASKS).read()
    assert summary.counts["ok"] == 1 and set(rows["method"]) == {"throwaway"}
    assert rows["method_params"].iloc[0] == '{"strength": 7, "train_length": null}'
    run_job(config(results, "method=origin", "task.lengths=[300]", "task.samples=1"))
    table = collect(results, results / "all.csv", tasks=TASKS)

    # figures take its label, colour and marker, and list it after the methods ordered before it
    assert style("throwaway") == dict(color="#123456", marker="p", label="Throwaway")
    assert methods_in(table) == ["origin", "throwaway"]
    built = build_all(pd.read_csv(results / "all.csv"), results / "figures")
    assert "passkey" in built and "heatmaps" in built

    # the Python API finds it by name
    assert method_names()[-1] == "throwaway"
    assert method_parameters("throwaway") == {"train_length": inspect.Parameter.empty, "strength": 7}
    assert apply_method(tiny_model(), "throwaway", strength=2).throwaway_strength == 2


def test_a_new_method_is_in_help_and_plan_mode_of_the_command_line(throwaway):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join([str(throwaway / "code"), str(ROOT)])}
    conf = ["--config-dir", str(throwaway / "conf")]

    def harness(*args):
        return subprocess.run([sys.executable, "-m", "harness", *conf, *args], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=300)

    shown = harness("--help")
    assert shown.returncode == 0, shown.stderr[-2000:]
    methods_line = next(line for line in shown.stdout.splitlines() if line.startswith("method:"))
    assert "throwaway" in methods_line and "mesa" in methods_line
    planned = harness("model=tiny-random", "method=throwaway", "plan=true", f"results_dir={throwaway}/results")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "plan: model=tiny-random method=throwaway task=passkey" in planned.stdout


def test_the_docs_methods_table_has_one_row_per_method_with_its_parameters():
    """docs/methods.md holds the methods table (the README links to it): one row per registered
    method, naming each parameter the class takes."""
    from harness.methods import METHODS

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    table = text[text.index("| method | relative distance d becomes"):]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.split("\n\n")[0].splitlines()[2:]}
    assert set(rows) == set(METHODS)
    for name, cls in METHODS.items():
        shown = [p for p in cls.parameters() if p not in ("train_length", "block_bytes")]
        assert all(f"`{p}`" in rows[name] for p in shown), (name, shown)

"""The import graph of harness/, tasks/ and plots/ points down: every module sits in one layer of
LAYERS and imports only modules of lower layers or of its own group. Imports inside functions
count (they are read from the source with ``ast``, not from what happens to be imported).

Why: a lower module that imports a higher one (results reading the task registry, the methods
reading the job) makes each depend on the other, and the fact it borrows has two homes.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "tasks", "plots")

# Bottom to top. Each layer is a list of groups (module names; "pkg.*": every module under pkg).
# A module may import any module of a lower layer and any of its own group; groups side by side in
# one layer know nothing of each other.
LAYERS: list[list[tuple[str, ...]]] = [
    # the package root (REPO_ROOT) and the one-line errors: everything may use them
    [("harness", "harness.errors")],
    # facts and helpers that need nothing of the harness but the above
    [("harness.identity",),  # what identifies rows: config and input hashes, the start directory
     ("harness.constants",),  # names shared by configs, loader, plan and results (dtypes, attention)
     ("harness.validation",),  # the one-line checks of typed settings
     ("harness.registry",),  # one class per name, for the method and task registries
     ("harness.architectures",),  # where each model family keeps its layers and how positions reach attention
     ("harness.devices",), ("harness.stats",), ("harness.measure",), ("harness.byte_tokenizer",)],
    # what changes a loaded model, and what loads one: a method applies to any model however loaded
    [("harness.methods", "harness.methods.*"), ("harness.models",)],
    # reading collected rows: series and their order, the baseline, thresholds and crossings
    # (compare, the figures and the tasks' tables share them)
    [("harness.analysis",)],
    # what a task computes, and how rows are stored: the runner brings them together (and hands
    # harness.results what a task's columns are), so neither imports the other
    [("tasks", "tasks.*"), ("harness.results",)],
    # a job's checked settings and results file (its task class is loaded by name, see NEVER)
    [("harness.job",)],
    # what the commands do: run, plan, summarise, collect, compare
    [("harness.runner",), ("harness.plan",), ("harness.summary",), ("harness.collect",), ("harness.compare",)],
    # the command line
    [("harness.cli", "harness.__main__", "harness.choices", "harness.launchers", "harness.callbacks")],
    # figures and tables of collected rows
    [("plots", "plots.*")],
]
# Downward imports the design still rules out: importer -> (imported package, why).
NEVER = {
    "harness.job": ("tasks", "a job loads its task class by the name its config gives (_target_), as it does a "
                             "method's, so a task defined outside tasks/ works the same"),
}
# Upward (or sideways) imports that must stay: (importer, imported) -> why. None.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the three packages: name -> source file."""
    return {module_name(path, root): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def imports_of(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``source`` (module ``name``) imports, anywhere in it. ``from a import b``
    counts as importing ``a.b`` when that is a module, else ``a``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module.split(".")[0] in PACKAGES}


def place(module: str) -> tuple[int, int] | None:
    """(layer, group) of ``module`` in LAYERS, or None if it has no place there."""
    for layer, groups in enumerate(LAYERS):
        for group, patterns in enumerate(groups):
            if any(module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in patterns):
                return layer, group
    return None


def violations(root: Path = ROOT) -> list[str]:
    """Every import against the layers, as "importer -> imported (why)"."""
    modules = project_modules(root)
    out = []
    for name, path in modules.items():
        here = place(name)
        for target in sorted(imports_of(path.read_text(), name, path.name == "__init__.py", set(modules))):
            there = place(target)
            if here is None or there is None or (name, target) in ALLOWED_UPWARD:
                continue  # unplaced modules are the other test's failure
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                out.append(f"{name} -> {target} ({'upward' if there[0] > here[0] else 'sideways, within a layer'})")
            elif name in NEVER and target.split(".")[0] == NEVER[name][0]:
                out.append(f"{name} -> {target} (never: {NEVER[name][1]})")
    return out


def test_every_module_has_its_place_in_the_layers():
    unplaced = [name for name in project_modules() if place(name) is None]
    assert not unplaced, f"add these modules to a layer of LAYERS in {Path(__file__).name}: {unplaced}"
    patterns = [p for groups in LAYERS for group in groups for p in group]
    assert len(patterns) == len(set(patterns))


def test_imports_point_down():
    found = violations()
    assert not found, "imports against the layers (move the fact down, or pass it in from above):\n" + "\n".join(found)


def test_the_check_sees_imports_inside_functions(tmp_path):
    """What the issue found: harness.results importing the task registry inside a function, and a
    task importing harness.job; the check flags both, and a downward import not."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "harness" / "results.py").write_text("def text_columns():\n    from tasks import TASKS\n")
    (tmp_path / "harness" / "job.py").write_text("from harness.identity import config_hash\n")
    (tmp_path / "harness" / "identity.py").write_text("")
    (tmp_path / "tasks" / "lmeval.py").write_text("def _resolve():\n    from harness.job import original_cwd\n")
    assert violations(tmp_path) == ["harness.results -> tasks (sideways, within a layer)",
                                    "tasks.lmeval -> harness.job (upward)"]

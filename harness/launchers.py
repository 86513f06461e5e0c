"""A one-line error when a multirun asks for a Hydra launcher whose plugin is not installed.

``python -m harness -m hydra/launcher=joblib`` without the plugin otherwise fails with Hydra's long
"Could not find 'hydra/launcher/joblib'" message. Our own launcher configs
(``conf/hydra/launcher/*.yaml``) extend a plugin's config through their defaults list, so they
need that plugin too. Names we do not know fall through to Hydra's own error.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import REPO_ROOT

LAUNCHER_DIR = REPO_ROOT / "conf" / "hydra" / "launcher"

# Hydra's launcher config name -> (the module its plugin registers it from, the pip package).
_JOBLIB = ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher")
_SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
_RAY = ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher")
_RQ = ("hydra_plugins.hydra_rq_launcher", "hydra-rq-launcher")
PLUGINS: dict[str, tuple[str, str]] = {
    "joblib": _JOBLIB,
    "submitit_local": _SUBMITIT,
    "submitit_slurm": _SUBMITIT,
    "ray": _RAY,
    "ray_aws": _RAY,
    "rq": _RQ,
}
# The plugins this project installs with `pip install -e '.[launchers]'` (pyproject.toml).
EXTRA = {_JOBLIB[1], _SUBMITIT[1]}


def requested_launchers(argv: Sequence[str]) -> list[str]:
    """The names given as ``hydra/launcher=NAME`` (also ``+``/``++``/``~`` forms) on the command line."""
    names = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "hydra/launcher":
            names += [name.strip().strip("'\"") for name in value.split(",") if name.strip()]
    return names


def plugin_for(name: str, launcher_dir: Path = LAUNCHER_DIR, _seen: frozenset = frozenset()) -> tuple[str, str] | None:
    """(module, pip package) that launcher config ``name`` needs, or None if it needs none we know of.

    One of our own configs needs whatever plugin config its defaults list extends."""
    if name in PLUGINS:
        return PLUGINS[name]
    own = launcher_dir / f"{name}.yaml"
    if name in _seen or not own.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        defaults = OmegaConf.to_container(OmegaConf.load(own)).get("defaults") or []
    except Exception:  # noqa: BLE001 - a broken config is Hydra's to report
        return None
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":
            found = plugin_for(entry, launcher_dir, _seen | {name})
            if found:
                return found
    return None


def _installed(module: str, find_spec: Callable) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # the hydra_plugins namespace itself is missing
        return False


def missing_plugin_message(argv: Sequence[str], find_spec: Callable | None = None,
                           launcher_dir: Path = LAUNCHER_DIR) -> str | None:
    """The one-line error for the first requested launcher whose plugin is missing, else None."""
    find_spec = find_spec or importlib.util.find_spec
    for name in requested_launchers(argv):
        plugin = plugin_for(name, launcher_dir)
        if plugin and not _installed(plugin[0], find_spec):
            how = f"pip install {plugin[1]}"
            if plugin[1] in EXTRA:
                how = f"pip install -e '.[launchers]' (or {how})"
            return f"error: launcher {name!r} needs the {plugin[1]} plugin: {how}"
    return None


def check_launcher_plugins(argv: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one line on stderr if a requested launcher's plugin is not installed."""
    message = missing_plugin_message(sys.argv[1:] if argv is None else argv)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)

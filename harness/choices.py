"""A one-line error for an unknown config group option (``method=mesaa``, ``task=nosuch``, ``+experiment=x``).

Hydra reports these as a dozen-line "Could not find 'method/mesaa'" block and exits with 1. The
options of this project's groups are the files in ``conf/<group>/``, so the command line can be
checked before Hydra composes anything. Sweep values (``method=origin,mesa``) are checked one by
one; values using Hydra's sweep functions (``choice(...)``, ``glob(...)``) and commands that add
config directories (``--config-dir``, ``hydra.searchpath``) are left to Hydra.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from harness import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
# Groups the user picks on the command line (model_method is chosen automatically; hydra/* is Hydra's).
GROUPS = ("model", "method", "task", "experiment")
_OWN_SEARCH_PATH = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def unknown_choice_message(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> str | None:
    """The one-line error for the first unknown group option on the command line, else None."""
    if any(arg.split("=")[0] in _OWN_SEARCH_PATH or arg.startswith("hydra.searchpath") for arg in argv):
        return None
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or group not in GROUPS or "(" in value or "*" in value:
            continue
        known = options(group, conf_dir)
        for name in (v.strip().strip("'\"") for v in value.split(",")):
            if name and name not in known:
                return f"error: unknown {group} {name!r}; choose from: {', '.join(known)}"
    return None


def check_choices(argv: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one line on stderr if the command line names an unknown group option."""
    message = unknown_choice_message(sys.argv[1:] if argv is None else argv)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)

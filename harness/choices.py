"""One-line errors for an unknown config group option (``method=mesaa``, ``task=nosuch``,
``+experiment=x``) and for a key that does not exist (``task.nosuch=1``).

Hydra reports these as a dozen-line "Could not find 'method/mesaa'" block, or a five-line "Could
not override" one, and exits with 1. The options of this project's groups are the files in
``conf/<group>/``, so the command line can be checked before Hydra composes anything. Sweep values
(``method=origin,mesa``) are checked one by one; values using Hydra's sweep functions
(``choice(...)``, ``glob(...)``) and commands that add config directories (``--config-dir``,
``hydra.searchpath``) are left to Hydra. Keys are checked by composing the config once with each
sweep's first value; anything that check cannot settle is left to Hydra too.
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


def unknown_key_message(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> str | None:
    """The one-line error for an override of a key the composed config does not have, else None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    if any(arg.split("=")[0] in _OWN_SEARCH_PATH or arg.startswith("hydra.searchpath") for arg in argv):
        return None
    try:
        overrides = [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - bad syntax (Hydra's own message says what is wrong) or a plugin failing to load
        return None
    single = []  # one job's overrides: a sweep's first value; Hydra's settings and glob() sweeps as they default
    for override in parsed:
        if (override.key_or_group.startswith("hydra")
                or override.value_type is not None and "GLOB" in override.value_type.name):
            continue
        if override.is_sweep_override():
            single.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}")
        else:
            single.append(override.input_line)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            compose("config", overrides=single)
    except ConfigCompositionException as error:
        lines = str(error).splitlines()
        if not lines or not lines[0].startswith("Could not override '"):
            return None
        key = lines[0].split("'")[1]
        value = next((o.input_line.partition("=")[2] for o in parsed if o.key_or_group == key), "...")
        return (f"error: {key} is not a setting here (see them with --cfg job); check the spelling, "
                f"or add a new key with +{key}={value}")
    except Exception:  # noqa: BLE001 - never block a command this check cannot judge
        return None
    return None


def check_choices(argv: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one line on stderr if the command line names an unknown group option."""
    _exit_with(unknown_choice_message(sys.argv[1:] if argv is None else argv))


def check_keys(argv: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one line on stderr if the command line overrides a key the config does
    not have. Composing loads Hydra's plugins, so the launcher check runs before this one."""
    _exit_with(unknown_key_message(sys.argv[1:] if argv is None else argv))


def _exit_with(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)

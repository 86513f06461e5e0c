"""The Hydra entry point: ``python -m harness [model=...] [method=...] [task=...] [overrides]``.

Errors the user can fix are printed as one line. A single run exits non-zero when its input is
bad (2) or when samples failed (1); in a multirun a bad or crashing job is reported (with its
traceback) and the sweep goes on, and the summary callback (harness.callbacks) sets the exit status at the end.
Hydra's own refusals of the command line (an override it cannot parse) are bad input too (2), and
Ctrl-C is one line and exit status 130 (the shell's for SIGINT): rows written so far are kept.
"""

from __future__ import annotations

import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from harness import REPO_ROOT
from harness.choices import check_choices, check_keys
from harness.errors import HarnessError
from harness.launchers import check_launcher_plugins

# conf/ sits beside the package in the repository (the project is installed editable).
CONFIG_DIR = str(REPO_ROOT / "conf")


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    from harness.plan import format_plan, plan_job
    from harness.runner import run_job
    from harness.summary import print_job_summary

    job = f"model={cfg.model.name} method={cfg.method.name} task={cfg.task.name}"
    if _is_multirun():  # the job's own overrides tell jobs of one sweep apart
        job = " ".join(HydraConfig.get().overrides.task) or job
    try:
        if cfg.get("plan"):  # list what would run; load nothing, compute nothing
            plan = plan_job(cfg)
            print(format_plan(plan), flush=True)
            return {"job": job, "planned": plan.to_run, "done": plan.done, "tokens": plan.tokens_to_run}
        summary = run_job(cfg)
    except (HarnessError, OmegaConfBaseException) as error:  # OmegaConf's: e.g. model.x=${nosuch} on the command line
        message = str(error) if isinstance(error, HarnessError) else _config_error(error)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if _is_multirun():
            return {"job": job, "invalid": message}
        sys.exit(2)
    except Exception as error:  # a bug or an unexpected failure: in a sweep, report it and go on
        if not _is_multirun():
            raise
        traceback.print_exc()
        first_line = str(error).splitlines()[0] if str(error) else ""
        return {"job": job, "crashed": f"{type(error).__name__}: {first_line}"}
    print_job_summary(summary)
    result = {"job": job, "path": str(summary.path), **summary.counts}
    if summary.failed and not _is_multirun():
        sys.exit(1)
    return result


def _config_error(error: OmegaConfBaseException) -> str:
    """OmegaConf's several-line message as one line: what is wrong, and the key."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    return (f"config: {lines[0] if lines else type(error).__name__}"
            + (f" ({key})" if key and key not in lines[0] else ""))


def results_dir_message(argv: list[str]) -> str | None:
    """The one-line error for ``results_dir=null`` or ``results_dir=`` on the command line, else None.
    Checked before Hydra starts: a sweep's folder (``${results_dir}/multirun/...``) is made before any job runs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.job import check_results_dir

    for arg in argv:
        if arg.lstrip("+").partition("=")[0] != "results_dir":
            continue
        try:
            override = OverridesParser.create().parse_overrides([arg])[0]
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # noqa: BLE001 - bad syntax: Hydra's own message says what is wrong
            return None
        for value in values:
            try:
                check_results_dir(value)
            except HarnessError as error:
                return f"error: {error}"
    return None


def _main() -> None:
    check_choices()  # an unknown model/method/task/experiment: one line naming the choices, exit 2
    message = results_dir_message(sys.argv[1:])  # results_dir=null or empty: one line, exit 2
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    check_launcher_plugins()  # a launcher plugin that is not installed: one line, exit 2
    check_keys()  # a key the config does not have (task.nosuch=1): one line, exit 2
    import transformers

    # generate() warns on every prompt longer than the model's max_position_embeddings, which is
    # the point of this harness; keep transformers to errors only.
    transformers.logging.set_verbosity_error()
    try:
        _hydra_main()
    except SystemExit as stop:
        from harness import callbacks

        if stop.code == 1 and not callbacks.started:  # Hydra refused the command line (it said why): bad input
            sys.exit(2)
        raise


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        print("interrupted: the rows written so far are kept; rerun the same command to go on", file=sys.stderr)
        sys.exit(130)

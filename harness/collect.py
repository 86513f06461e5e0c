"""python -m harness.collect [--results results] [--out results/all.csv]: every job's rows in one CSV.

Paths are relative to the current directory, like ``results_dir`` of ``python -m harness``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.results import collect
from tasks import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.collect", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the results directory (default: results)")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/all.csv")
    args = parser.parse_args(argv)
    out = args.out or args.results / "all.csv"
    if not (args.results / "runs").is_dir():
        print(f"error: {args.results / 'runs'} does not exist: no rows to collect (run python -m harness first, "
              f"or give --results)", file=sys.stderr)
        return 2
    try:
        table = collect(args.results, out, tasks=TASKS)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(table)} rows -> {out}")
    if len(table):
        print(table.groupby(["task", "model", "method"]).size().rename("rows").to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m harness.collect [--results results] [--out results/all.csv]: every job's rows in one CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.results import collect
from harness import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results", help="the results directory")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/all.csv")
    args = parser.parse_args(argv)
    out = args.out or args.results / "all.csv"
    try:
        table = collect(args.results, out)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(table)} rows -> {out}")
    if len(table):
        print(table.groupby(["task", "model", "method"]).size().rename("rows").to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

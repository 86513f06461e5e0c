"""python -m plots [--results results/all.csv] [--out DIR]: every figure + an index page.

``--results`` is a collected CSV or, as for harness.collect and harness.compare, a results
directory (its ``runs/**``). Figures are written next to the rows they come from:
``<folder of the CSV>/figures/`` or ``<results directory>/figures/`` unless ``--out`` says otherwise.
``make figures`` collects ``results/cpu-smollm2/runs/**`` into
``results/cpu-smollm2/all.csv`` and draws the committed figures into ``results/cpu-smollm2/figures/``;
``make figures FIGURES_FROM=results`` draws one's own rows into ``results/figures/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.results import read_rows
from plots.figures import build_all, captions
from tasks import TASKS

HEATMAPS_CAPTION = "Method x length mean score per task and model; grey n/a = no row, OOM/ERROR = only failures."


def write_index(built: dict[str, list[Path]], out_dir: Path, source: Path) -> Path:
    where = Path(os.path.relpath(Path(source).resolve(), Path(out_dir).resolve())).as_posix()
    lines = ["# Figures", "", f"Drawn by `python -m plots` (`make figures`) from `{where}`.", ""]
    caption = captions() | {"heatmaps": HEATMAPS_CAPTION}
    for name, paths in built.items():
        lines += [f"## {name}", "", caption.get(name, ""), ""]
        lines += [f"![{p.stem}]({p.name})" for p in paths if p.suffix == ".png"]
        lines += [f"Table: [{p.name}]({p.name})" for p in paths if p.suffix == ".csv"]
        lines.append("")
    index = out_dir / "index.md"
    index.write_text("\n".join(lines))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results") / "all.csv",
                        help="the collected rows, or a results directory with runs/ (default: results/all.csv, "
                             "relative to the current directory)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: a figures/ folder next to the CSV, or in the results directory")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"error: {args.results} does not exist; run python -m harness.collect first", file=sys.stderr)
        return 2
    try:
        frame = read_rows(args.results, tasks=TASKS)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if frame.empty:
        print(f"error: {args.results} has no rows", file=sys.stderr)
        return 2
    out = args.out or (args.results if args.results.is_dir() else args.results.parent) / "figures"
    built = build_all(frame, out)
    index = write_index(built, out, args.results)
    print(f"{sum(len(p) for p in built.values())} files -> {out} (index: {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

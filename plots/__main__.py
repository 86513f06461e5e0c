"""python -m plots [--results results/all.csv] [--out plots/figures]: every figure + an index page.

``make figures`` first collects results/runs/** into results/all.csv, then runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness import REPO_ROOT as ROOT
from plots.figures import build_all

CAPTIONS = {
    "passkey": "Passkey retrieval accuracy vs input length (paper Figure 3); band = +- one std over samples; "
               "dashed line = the model's training length; x = a length where every sample failed (OOM/ERR).",
    "ppl": "Mean NLL per token vs input length (paper Figure 4); dashed line = training length.",
    "speed": "Peak memory during prefill (bars), prefill time (lines) and per-token decode time vs length (Figure 5).",
    "longeval": "LongEval line-retrieval accuracy vs number of lines (paper Figure 7).",
    "heatmaps": "Method x length mean score per task and model; grey n/a = no row, OOM/ERROR = only failures.",
}


def write_index(built: dict[str, list[Path]], out_dir: Path, source: Path) -> Path:
    lines = ["# Figures", "", f"Drawn by `make figures` from `{source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}`.", ""]
    for name, paths in built.items():
        lines += [f"## {name}", "", CAPTIONS.get(name, ""), ""]
        lines += [f"![{p.stem}]({p.name})" for p in paths if p.suffix == ".png"]
        lines.append("")
    index = out_dir / "index.md"
    index.write_text("\n".join(lines))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "all.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "plots" / "figures")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"error: {args.results} does not exist; run python -m harness.collect first", file=sys.stderr)
        return 2
    frame = pd.read_csv(args.results)
    if frame.empty:
        print(f"error: {args.results} has no rows", file=sys.stderr)
        return 2
    built = build_all(frame, args.out)
    index = write_index(built, args.out, args.results)
    print(f"{sum(len(p) for p in built.values())} files -> {args.out} (index: {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

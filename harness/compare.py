"""python -m harness.compare [--results results] [--out <results>/compare.csv] [--alpha 0.05]:
paired comparisons of every two methods on the same inputs.

Every method sees exactly the same inputs (equal ``input_hash`` in the rows), so two methods are
compared input by input rather than by eyeballing overlapping intervals. For each model, task,
length and pair of series (a method; "<method> (eager)" for rows with eager attention), over the
inputs both scored ``ok`` with the same ``input_hash``:

* 0/1 scores (tasks with ``score_kind = "binary"``: passkey, LongEval): the difference of the two
  accuracies with Newcombe's paired score interval, and McNemar's exact test;
* other scores (``score_kind = "continuous"``: NLL): the mean paired difference with its t
  interval, and the exact sign-flip test;
* tasks with no ``score_kind`` (timings) are not compared.

``difference`` is first minus second; ``better`` says which series the difference favours in the
task's direction (``higher_is_better``; empty when equal), significant or not: compare ``p_value``
with your alpha (the printed table names the better series only when p < alpha). With 2-4
samples per length nothing can be significant (the smallest two-sided exact p-value with n pairs
is 2 / 2^n): the table says so rather than hiding it. Rows: one per (model, task, length, first,
second), the first series later in the methods' order than the second (so Origin is always second).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness import stats
from harness.analysis import baseline, pairing_order, series_by_settings
from harness.errors import HarnessError
from harness.results import read_rows
from tasks import TASKS

COLUMNS = ["model", "task", "metric", "length", "first", "second", "pairs", "first_mean", "second_mean",
           "difference", "ci_low", "ci_high", "test", "p_value", "better"]


def paired_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per compared (model, task, length, first, second); see the module docstring.
    ``frame``'s ``method`` column names the series (see harness.analysis.series_by_settings)."""
    out = []
    if "input_hash" not in frame.columns:  # rows that cannot be matched input by input
        return pd.DataFrame(out, columns=COLUMNS)
    frame = frame[frame["status"] == "ok"]
    if "timestamp" in frame.columns:
        frame = frame.sort_values("timestamp", kind="stable")
    for (model, task, length), cell in frame.groupby(["model", "task", "length"], sort=True):
        cls = TASKS.get(task)
        if cls is None or cls.score_kind is None:
            continue
        # The latest row of each (series, input): a rerun with other settings replaces, never averages.
        cell = cell.drop_duplicates(["method", "sample", "input_hash"], keep="last")
        scores = cell.pivot_table(index=["sample", "input_hash"], columns="method", values="score", aggfunc="last")
        for first, second in itertools.combinations(sorted(scores.columns, key=pairing_order, reverse=True), 2):
            both = scores[[first, second]].dropna()
            if both.empty:
                continue
            out.append(dict(model=model, task=task, metric=cls.metric, length=int(length), first=first,
                            second=second, **_compare(both[first].to_numpy(), both[second].to_numpy(), cls)))
    result = pd.DataFrame(out, columns=COLUMNS)
    order = [pairing_order(second) + pairing_order(first) for first, second in zip(result["first"], result["second"])]
    result = result.assign(_order=order).sort_values(["model", "task", "length", "_order"], kind="stable")
    return result.drop(columns="_order").reset_index(drop=True)


def _compare(first: np.ndarray, second: np.ndarray, task_cls) -> dict:
    difference = first - second
    if task_cls.score_kind == "binary":
        a, b = first.astype(bool), second.astype(bool)
        only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
        low, high = stats.paired_proportion_ci(int((a & b).sum()), only_first, only_second, int((~a & ~b).sum()))
        test, p = "mcnemar-exact", stats.mcnemar_exact(only_first, only_second)
    else:
        (low, high), test, p = stats.paired_t_ci(difference), "sign-flip-exact", stats.sign_flip_test(difference)
    mean = float(difference.mean())
    return dict(pairs=len(difference), first_mean=float(first.mean()), second_mean=float(second.mean()),
                difference=mean, ci_low=low, ci_high=high, test=test, p_value=p,
                better=_better(mean, task_cls.higher_is_better))


def _better(difference: float, higher_is_better: bool) -> str:
    if difference == 0:
        return ""
    return "first" if (difference > 0) == higher_is_better else "second"


def significant(rows: pd.DataFrame, alpha: float) -> pd.Series:
    """Rows whose exact test rejects "no difference" at ``alpha``."""
    return rows["p_value"] < alpha


def report(rows: pd.DataFrame, alpha: float, baseline: str | None) -> str:
    """The comparisons against ``baseline`` (every pair if None) as a fixed-width table."""
    shown = rows if baseline is None else rows[rows["second"] == baseline]
    if shown.empty:
        return "no pairs of methods with rows on the same inputs"
    table = shown.assign(
        difference=shown["difference"].map("{:+.3f}".format),
        ci=[f"[{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else "-"
            for lo, hi in zip(shown["ci_low"], shown["ci_high"])],
        p_value=shown["p_value"].map("{:.3g}".format),
        better=[(r["first"] if r["better"] == "first" else r["second"]) if p < alpha and r["better"] else "-"
                for r, p in zip(shown.to_dict("records"), shown["p_value"])],
    )[["model", "task", "length", "first", "second", "pairs", "difference", "ci", "test", "p_value", "better"]]
    smallest = 2.0 / 2 ** shown["pairs"].max()
    note = (f"better: significantly better at alpha={alpha} (exact two-sided tests); "
            f"with at most {shown['pairs'].max()} pairs per cell the smallest possible p is {min(1.0, smallest):.3g}")
    return table.to_string(index=False) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="a results directory (with runs/) or a collected CSV (default: results)")
    parser.add_argument("--out", type=Path, default=None, help="the CSV of every pair (default: <results>/compare.csv)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    parser.add_argument("--baseline", default=None,
                        help="the method the printed table compares with (default: the first in the methods' "
                             "order, the unchanged model; 'all' prints every pair)")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.alpha < 1:
            raise HarnessError(f"--alpha must be between 0 and 1, got {args.alpha}")
        rows = paired_rows(series_by_settings(read_rows(args.results, tasks=TASKS)))
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = args.results if args.results.is_dir() else args.results.parent
    out = args.out or folder / "compare.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(out)
    shown = args.baseline or baseline()
    print(report(rows, args.alpha, None if shown == "all" else shown))
    print(f"{len(rows)} comparisons -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

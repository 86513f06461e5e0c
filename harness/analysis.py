"""Reading collected rows, as compare, the figures and the tasks' tables share it: which series the
rows form and in which order, which method is the baseline, and the hidden-state argument's
thresholds, crossings and predicted-vs-observed table.

Series: rows run with a non-default attention implementation, or with a ``label`` (a job's name
for its settings, e.g. ``label=8k-settings``), form a series of their own, "<method> (<variant>)"
(e.g. "origin (eager)", "mesa (8k-settings)", "mesa (eager, 8k-settings)"), so they are never
averaged or paired with the same method's plain rows. :func:`series_name` builds that name and
:func:`split_series` parses it; nothing else does either.

Nothing here draws or tests: plots.figures draws, harness.compare tests.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.constants import DEFAULT_ATTN_IMPLEMENTATION
from harness.methods import METHODS, method_names

# The attention implementation whose rows keep the method's own name (transformers' default).
DEFAULT_ATTENTION = DEFAULT_ATTN_IMPLEMENTATION


# -- series -------------------------------------------------------------------------------------
def series_name(method: str, variant: str | None) -> str:
    """"<method>" for a method's plain rows (``variant`` None), else "<method> (<variant>)"."""
    return method if variant is None else f"{method} ({variant})"


def split_series(series: str) -> tuple[str, str | None]:
    """"<method> (eager)" -> ("<method>", "eager"); "<method>" -> ("<method>", None): the inverse of
    :func:`series_name`."""
    method, _, variant = series.partition(" (")
    return (method, variant[:-1]) if variant.endswith(")") else (series, None)


SERIES_PARTS_SEPARATOR = ", "


def variant_parts(variant: str | None) -> list[str]:
    """The parts of a series' variant, in order: a non-default attention implementation, then the
    job's ``label`` (e.g. "eager, 8k-settings" -> ["eager", "8k-settings"])."""
    return variant.split(SERIES_PARTS_SEPARATOR) if variant else []


def series_by_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with ``method`` naming their series: rows run with a non-default attention
    implementation, or with a ``label``, are renamed "<method> (<implementation>, <label>)"
    (only the parts that are set; see the module docstring)."""
    parts = []
    if "attn_implementation" in frame.columns:
        attention = frame["attn_implementation"].fillna(DEFAULT_ATTENTION).astype(str)
        parts.append(attention.where(attention != DEFAULT_ATTENTION, ""))
    if "label" in frame.columns:
        parts.append(frame["label"].map(lambda value: "" if pd.isna(value) else str(value)))
    if not parts:
        return frame
    variants = [SERIES_PARTS_SEPARATOR.join(p for p in row if p) for row in zip(*parts)]
    if not any(variants):
        return frame
    frame = frame.copy()
    frame["method"] = [series_name(method, variant or None) for method, variant in zip(frame["method"], variants)]
    return frame


def series_order(series: str) -> tuple:
    """Sort key of legends and tables: the methods in their own ``order``, then their variant
    series, then methods without a class in this checkout, by name."""
    method, variant = split_series(series)
    cls = METHODS.get(method)
    if cls is None:
        return (2, 0, series)
    return (0 if variant is None else 1, cls.order, series)


def pairing_order(series: str) -> tuple:
    """Sort key of paired comparisons (python -m harness.compare): the methods in their own
    ``order``, each method's variant series right after it, methods without a class last."""
    method, variant = split_series(series)
    cls = METHODS.get(method)
    return (cls.order if cls else math.inf, method, variant or "")


def baseline() -> str:
    """The method every other is compared with: the first in the methods' order (Origin, the
    unchanged model)."""
    return method_names()[0]


# -- the hidden-state argument (tasks.hidden) ----------------------------------------------------
CROSSING_STEPS = 3  # tolerance, in median steps between recorded positions inside T: noise on a plateau is no crossing
FAILING_ACCURACY = 0.5  # an observed failure: the first length whose accuracy is below this


def longest_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (model, method)'s longest input: the curve the figure and table read."""
    return rows[rows["length"] == rows.groupby(["model", "method"])["length"].transform("max")]


def panel_thresholds(rows: pd.DataFrame) -> dict[tuple, float]:
    """(model, layer, dim) -> the threshold: the model's value at T - 1, i.e. the baseline's (the
    first method in the methods' order, Origin) where its rows exist, since methods that are not
    Origin inside T (e.g. Dynamic-NTK) move their own; else the first method's in that order."""
    rank = {name: i for i, name in enumerate(method_names())}
    ordered = rows.sort_values("method", key=lambda m: m.map(lambda name: rank.get(name, len(rank))), kind="stable")
    return {key: float(cell["threshold"].iloc[0])
            for key, cell in ordered.groupby(["model", "layer", "dim"], sort=False)}


def first_crossing(positions, values, threshold: float, train_length: int) -> int | None:
    """The first position >= T where ``values`` lie beyond ``threshold`` on the side away from
    their mean over positions < T - 1, by more than CROSSING_STEPS times the median |change|
    between successive recorded positions there (a robust scale of the curve's own movement, so
    float noise around a plateau at the threshold does not count; None: no crossing, or no
    position on either side of T)."""
    positions, values = np.asarray(positions), np.asarray(values, dtype=float)
    inside = values[positions < train_length - 1]
    if inside.size == 0:
        return None
    side = np.sign(threshold - inside.mean()) or 1.0
    margin = CROSSING_STEPS * np.median(np.abs(np.diff(inside))) if inside.size > 1 else 0.0
    beyond = (positions >= train_length) & (side * (values - threshold) > margin)
    return int(positions[beyond][0]) if beyond.any() else None


PREDICTION_COLUMNS = ["model", "method", "layer", "dim", "longest_input", "threshold", "predicted_failure",
                      "observed_failure"]


def hidden_prediction(hidden: pd.DataFrame, observed: pd.DataFrame) -> pd.DataFrame:
    """Per model, method, layer and dimension of the ``ok`` hidden-state rows ``hidden``, the
    predicted failure position (the curve's first crossing past T of the panel's threshold, on
    the method's longest input) beside the observed one: the first length whose mean score is
    below FAILING_ACCURACY in the ``ok`` 0/1-scored rows ``observed`` of the same model and method."""
    hidden = longest_curves(hidden)
    thresholds = panel_thresholds(hidden)
    out = []
    for (model, method, layer, dim), cell in hidden.groupby(["model", "method", "layer", "dim"]):
        cell = cell.sort_values("position")
        threshold = thresholds[(model, layer, dim)]
        predicted = first_crossing(cell["position"], cell["score"], threshold, int(cell["train_length"].iloc[0]))
        accuracy = (observed[(observed["model"] == model) & (observed["method"] == method)]
                    .groupby("length")["score"].mean())
        failing = accuracy[accuracy < FAILING_ACCURACY]
        out.append(dict(model=model, method=method, layer=int(layer), dim=int(dim),
                        longest_input=int(cell["length"].max()), threshold=threshold, predicted_failure=predicted,
                        observed_failure=int(failing.index.min()) if len(failing) else None))
    return pd.DataFrame(out, columns=PREDICTION_COLUMNS)

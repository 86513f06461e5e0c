"""The paper's figures, drawn from the tidy results table (``results/all.csv``).

Which figures there are is up to the tasks (``Task.figures``, drawn by the function for the
figure's ``kind``), and how each method looks is up to the method (``Method.label``, ``color``,
``marker``, ``order``): this module names neither. Each ``plot_*`` function takes the whole
table, draws whatever models, methods and lengths it contains, and returns the written paths
(PNG and PDF) or [] when the table has no row for it. A method with no class in this checkout
gets a colour and marker from its name, the same everywhere; the methods with no row for a model
are still named in that panel's legend (one "no rows: ..." line), and failed cells are marked,
never dropped silently. Lengths double in every sweep, so length axes are log2. Accuracies carry 95% Wilson
intervals, and every point's number of samples is written above the panel. Files carry no timestamps: the same rows give
byte-identical files, so redrawing leaves ``git status`` clean.

Readable with many methods (the nine built in, and more): past ``LEGEND_INSIDE_MAX`` series a
panel is wider and its legend goes under it in columns (beside it, the legend took most of the
width); methods drawn at one length are spread sideways over a share of the narrowest gap between
two lengths, so their error bars stay apart; a figure of several panels builds its legend from
all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from harness.analysis import (  # noqa: E402
    baseline,
    first_crossing,
    longest_curves,
    panel_thresholds,
    series_by_settings,
    series_order,
    split_series,
    variant_parts,
)
from harness.compare import paired_rows  # noqa: E402
from harness.constants import ATTN_IMPLEMENTATIONS  # noqa: E402
from harness.methods import METHODS  # noqa: E402
from harness.models import configured_train_length  # noqa: E402
from harness.stats import wilson  # noqa: E402
from tasks import TASKS, task_by_name  # noqa: E402
from tasks.base import FIGURE_KINDS, Figure  # noqa: E402

# A series of rows run with another attention implementation than the default (sdpa), e.g.
# "<method> (eager)": its method's colour mixed with this much white, and this marker. A labelled
# series ("<method> (8k-settings)") gets its method's colour darkened or lightened, and a marker,
# both chosen by a hash of its variant, so two variants of one method look different.
VARIANT_WHITE = 0.45
VARIANT_MARKER = "x"
LABEL_SHADES = (-0.45, 0.35, -0.25, 0.55)  # < 0: mixed with black, > 0: with white
LABEL_MARKERS = ("P", "X", "d", "*", "h", "p")


# Styles for a method without a class in this checkout (rows from another branch), minus those of
# the registered methods.
_EXTRA_COLORS = ["#7f7f7f", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
                 "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_EXTRA_MARKERS = ["<", ">", "p", "d", "8", "H", "P", "X", "*", "h"]
# No timestamps or tool versions in the files: the same rows draw byte-identical figures.
ALPHA = 0.05  # points significantly better than Origin (paired exact tests) are ringed
LEGEND_INSIDE_MAX = 6  # series a legend may list inside the panel
LEGEND_COLUMNS = 3  # columns of a legend under a panel (more series than LEGEND_INSIDE_MAX)
# The methods at one length are spread sideways over this share of the narrowest gap between two
# lengths (log2 units), at most DODGE_STEP_MAX apart: 12k and 16k are only 0.42 apart.
DODGE_SHARE = 0.6
DODGE_STEP_MAX = 0.04
RING_SIZE = 110  # marker area (pt^2) of the ring around a significantly better point
HIDDEN_SETTLED_FRACTION = 16  # hidden-state panels scale their y axis to the values from T / 16 on
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def style(series: str) -> dict:
    """The series' colour, marker and label, from its method's class; a method without a class in
    this checkout gets them from a hash of its name."""
    method, variant = split_series(series)
    cls = METHODS.get(method)
    if cls is None:
        digest = hashlib.sha1(series.encode()).digest()
        colors = [c for c in _EXTRA_COLORS if c not in {cls.color for cls in METHODS.values()}]
        markers = [m for m in _EXTRA_MARKERS if m not in {cls.marker for cls in METHODS.values()} | {VARIANT_MARKER}]
        return dict(color=colors[digest[0] % len(colors)], marker=markers[digest[1] % len(markers)], label=series)
    if variant is None:
        return dict(color=cls.color, marker=cls.marker, label=cls.label)
    parts = variant_parts(variant)
    words = ", ".join(f"{p} attention" if p in ATTN_IMPLEMENTATIONS else p for p in parts)
    rgb = matplotlib.colors.to_rgb(cls.color)
    if all(p in ATTN_IMPLEMENTATIONS for p in parts):
        lighter = matplotlib.colors.to_hex([c + (1 - c) * VARIANT_WHITE for c in rgb])
        return dict(color=lighter, marker=VARIANT_MARKER, label=f"{cls.label} ({words})")
    digest = hashlib.sha1(variant.encode()).digest()
    shade = LABEL_SHADES[digest[0] % len(LABEL_SHADES)]
    shaded = [c + (1 - c) * shade if shade > 0 else c * (1 + shade) for c in rgb]
    return dict(color=matplotlib.colors.to_hex(shaded), marker=LABEL_MARKERS[digest[1] % len(LABEL_MARKERS)],
                label=f"{cls.label} ({words})")


def length_label(length) -> str:
    """Compact tick label: 4096 -> 4k, 12288 -> 12k, 300 -> 300."""
    length = int(length)
    return f"{length // 1024}k" if length >= 1024 and length % 1024 == 0 else str(length)


def log2_length_axis(ax, lengths, xlabel: str) -> None:
    """A log2 length axis with one labelled tick per length in the data."""
    lengths = sorted({int(v) for v in lengths})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [length_label(v) for v in lengths], rotation=45 if len(lengths) > 8 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)


def samples_axis(ax, counts: dict[int, list[int]], log2: bool = True) -> None:
    """Above the panel: the number of samples behind each length's points ("n=4", or "n=2-4" if methods differ)."""
    top = ax.secondary_xaxis("top")
    if log2:
        top.set_xscale("log", base=2)
    lengths = sorted(counts)
    labels = [f"n={min(counts[v])}" if min(counts[v]) == max(counts[v]) else f"n={min(counts[v])}-{max(counts[v])}"
              for v in lengths]
    top.set_xticks(lengths, labels, fontsize=7)
    top.xaxis.set_minor_locator(NullLocator())
    top.tick_params(length=0)


def methods_in(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["method"].unique(), key=series_order)


def length_unit(task: str) -> str:
    """What the task's ``length`` counts (tokens for a task without a class in this checkout)."""
    cls = task_by_name(task)
    return cls.length_unit if cls is not None else "tokens"


def length_axis_label(task: str) -> str:
    """"input length (tokens; k = 1024)", or e.g. "number of lines (not tokens)" for a task that counts lines."""
    unit = length_unit(task)
    return "input length (tokens; k = 1024)" if unit == "tokens" else f"number of {unit} (not tokens)"


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight", metadata=SAVE_METADATA["png"])
    fig.savefig(paths[1], bbox_inches="tight", metadata=SAVE_METADATA["pdf"])
    plt.close(fig)
    return paths


def _panels(n: int, width: float = 5.2, height: float = 3.8):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def dodge_step(lengths, series: int) -> float:
    """Sideways distance (log2 units) between neighbouring series at one length (see DODGE_SHARE)."""
    logs = np.log2(sorted({float(v) for v in lengths}))
    gap = float(np.diff(logs).min()) if len(logs) > 1 else 1.0
    return min(DODGE_STEP_MAX, DODGE_SHARE * gap / max(1, series - 1))


def no_rows_entry(labels: list[str]):
    """One legend line naming the methods without rows in a panel (instead of one entry each)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", label=f"no rows: {', '.join(labels)}")


def panel_legend(ax, many: bool, series: list[str]) -> None:
    """Inside the panel for a few series; under it, in columns, for many (beside it, it took most of the
    width). The series (in the order of ``series``, their names) come first, then reference lines and notes."""
    handles, labels = ax.get_legend_handles_labels()
    rank = {style(name)["label"]: i for i, name in enumerate(series)}
    order = sorted(range(len(labels)), key=lambda i: (labels[i] not in rank, rank.get(labels[i], 0), i))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if many:
        ax.legend(handles, labels, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=LEGEND_COLUMNS, frameon=False, handletextpad=0.4, columnspacing=1.2)
    else:
        ax.legend(handles, labels, fontsize=7, loc="best", framealpha=0.8)


def _mark_training_length(ax, model: str) -> None:
    t = configured_train_length(model)
    if t is not None:
        ax.axvline(t, color="black", linestyle="--", linewidth=1, label=f"training length ({t})")


def plot_metric_vs_length(frame: pd.DataFrame, task: str, figure: Figure, out_dir: Path) -> list[Path]:
    """One panel per model: per method and length the mean score with its interval, failed cells marked.

    Figure kind "accuracy": scores are 0/1 successes; error bars are 95% Wilson intervals.
    "mean_std": a shaded band of +- one standard deviation over samples."""
    band = "wilson" if figure.kind == "accuracy" else "std"
    ylim = (-0.05, 1.05) if figure.kind == "accuracy" else None
    title, ylabel, xlabel = figure.title, figure.ylabel, length_axis_label(task)
    rows = frame[frame["task"] == task]
    if rows.empty:
        return []
    all_methods = methods_in(frame)
    models = sorted(rows["model"].unique())
    better = better_than_baseline(rows)
    many = len(all_methods) > LEGEND_INSIDE_MAX
    fig, axes = _panels(len(models), *((8.4, 5.6) if many else (5.2, 3.8)))
    for ax, model in zip(axes, models):
        sub = rows[rows["model"] == model]
        counts: dict[int, list[int]] = {}
        step = dodge_step(sub["length"], len(all_methods))
        missing = []
        for rank, method in enumerate(all_methods):
            st = style(method)
            # a sideways shift per method (in log2 units), so equal values and their bars do not hide each other
            shift = 2.0 ** ((rank - (len(all_methods) - 1) / 2) * step)
            cell = sub[sub["method"] == method]
            ok = cell[cell["status"] == "ok"]
            if cell.empty:
                missing.append(st["label"])
                continue
            stats = ok.groupby("length")["score"].agg(["mean", "std", "count", "sum"]).reset_index()
            for length, n in zip(stats["length"], stats["count"]):
                counts.setdefault(int(length), []).append(int(n))
            x = stats["length"] * shift
            if band == "wilson":
                low, high = wilson(stats["sum"], stats["count"])
                yerr = np.vstack([stats["mean"] - low, high - stats["mean"]]).clip(0)
                ax.errorbar(x, stats["mean"], yerr=yerr, color=st["color"], marker=st["marker"],
                            capsize=2 if many else 3, markersize=5 if many else 6, linewidth=1.2 if many else 1.4,
                            elinewidth=0.9, label=st["label"])
            else:
                ax.plot(x, stats["mean"], color=st["color"], marker=st["marker"], label=st["label"])
            ringed = stats["length"].map(lambda length: (model, method, int(length)) in better).to_numpy(dtype=bool)
            if ringed.any():
                ax.scatter(x[ringed], stats["mean"][ringed], s=RING_SIZE, facecolors="none", edgecolors=st["color"],
                           linewidths=1.3, zorder=6)
            if band != "wilson" and (stats["count"] > 1).any():
                spread = stats["std"].fillna(0)
                ax.fill_between(x, stats["mean"] - spread, stats["mean"] + spread, color=st["color"], alpha=0.15,
                                linewidth=0)
            failed = cell[cell["status"] != "ok"].groupby("length")["status"].agg(lambda s: s.mode().iloc[0])
            failed = failed[~failed.index.isin(ok["length"])]  # lengths with no ok sample at all
            for length, status in failed.items():
                counts.setdefault(int(length), []).append(0)
                y = ax.get_ylim()[0] if ylim is None else ylim[0]
                ax.scatter([length * shift], [y], marker="x", s=60, color=st["color"], clip_on=False, zorder=5)
                ax.annotate(status.upper(), (length * shift, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7, color=st["color"])
        if any(key[0] == model for key in better):
            ax.scatter([], [], s=RING_SIZE, facecolors="none", edgecolors="black", linewidths=1.3,
                       label=f"ringed: better than {style(baseline())['label']} (paired exact test, p < {ALPHA})")
        if length_unit(task) == "tokens":  # a length in lines cannot be compared with a training length
            _mark_training_length(ax, model)
        if missing:
            ax.add_line(no_rows_entry(missing))
        log2_length_axis(ax, sub["length"], xlabel)
        samples_axis(ax, counts)
        ax.set_title(f"{title}: {model}")
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        panel_legend(ax, many, all_methods)
    return _save(fig, out_dir, figure.file)


def better_than_baseline(rows: pd.DataFrame, alpha: float | None = None) -> set[tuple[str, str, int]]:
    """(model, series, length) where the series is significantly better than the baseline (the
    first method in the methods' order, Origin) on the same inputs (python -m harness.compare)."""
    alpha = ALPHA if alpha is None else alpha
    pairs = paired_rows(rows)
    hits = pairs[(pairs["second"] == baseline()) & (pairs["p_value"] < alpha) & (pairs["better"] == "first")]
    return {(model, first, int(length)) for model, first, length in zip(hits["model"], hits["first"], hits["length"])}


def plot_memory_and_latency(frame: pd.DataFrame, task: str, figure: Figure, out_dir: Path) -> list[Path]:
    """Paper Figure 5: peak memory (bars, ``peak_mb``) and prefill latency (lines, ``prefill_s``) vs
    length; decode latency (``decode_ms_per_token``) in a second row."""
    rows = frame[(frame["task"] == task) & (frame["status"] == "ok")]
    everything = frame[frame["task"] == task]
    if everything.empty:
        return []
    models = sorted(everything["model"].unique())
    all_methods = methods_in(frame)
    fig, grid = plt.subplots(2, len(models), figsize=(6.6 * len(models), 7.6), squeeze=False, layout="constrained")
    for col, model in enumerate(models):
        ax_mem, ax_dec = grid[0][col], grid[1][col]
        sub = rows[rows["model"] == model]
        lengths = sorted(everything[everything["model"] == model]["length"].unique())
        x = np.log2(np.asarray(lengths, dtype=float))  # a log2 length axis (bars need linear positions)
        gap = float(np.diff(x).min()) if len(x) > 1 else 1.0
        # bars only for the methods with rows here; the others are one "no rows" line in the legend
        present = [m for m in all_methods if (everything[everything["model"] == model]["method"] == m).any()]
        missing = [style(m)["label"] for m in all_methods if m not in present]
        width = 0.8 * gap / max(1, len(present))
        ax_time = ax_mem.twinx()
        handles = []  # one entry per method: its bar and its line
        for i, method in enumerate(present):
            st = style(method)
            cell = (sub[sub["method"] == method]
                    .groupby("length")[["peak_mb", "prefill_s", "decode_ms_per_token"]].mean())
            cell = cell.reindex(lengths)
            offset = (i - (len(present) - 1) / 2) * width
            bars = ax_mem.bar(x + offset, cell["peak_mb"] / 1024, width, color=st["color"], alpha=0.45)
            (line,) = ax_time.plot(x, cell["prefill_s"], color=st["color"], marker=st["marker"])
            handles.append(((bars.patches[0] if bars.patches else line, line), st["label"]))
            ax_dec.plot(x, cell["decode_ms_per_token"], color=st["color"], marker=st["marker"], label=st["label"])
            failed = everything[(everything["model"] == model) & (everything["method"] == method)
                                & (everything["status"] != "ok")]
            for length in sorted(set(failed["length"]) - set(sub[sub["method"] == method]["length"])):
                j = lengths.index(length)
                ax_mem.annotate("OOM" if (failed[failed["length"] == length]["status"] == "oom").any() else "ERR",
                                (x[j] + offset, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=7, color=st["color"], rotation=90)
        for ax in (ax_mem, ax_dec):
            ax.set_xticks(x, [length_label(v) for v in lengths])
            ax.set_xlabel("input length (tokens, log2 scale; k = 1024)")
            ax.grid(alpha=0.3, axis="y")
        ax_mem.set_ylabel("peak memory during prefill (GiB, bars)")
        ax_time.set_ylabel("prefill time (s, lines)")
        ax_dec.set_ylabel("decode time (ms per token)")
        ax_mem.set_title(f"{figure.title}: {model}")
        ax_dec.set_title(f"Decode latency: {model}")
        if missing:
            handles.append((no_rows_entry(missing), no_rows_entry(missing).get_label()))
        ax_mem.legend([h for h, _ in handles], [label for _, label in handles], fontsize=7, loc="upper left",
                      framealpha=0.8, handler_map={tuple: HandlerTuple(ndivide=None, pad=0.3)},
                      title="bars: memory; lines: prefill time", title_fontsize=7)
        if present:
            ax_dec.legend(fontsize=7, loc="upper left", framealpha=0.8)
    return _save(fig, out_dir, figure.file)


def plot_heatmaps(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Method x length mean score per (task, model), for quick reading; missing cells are grey 'n/a'.
    A task whose rows mix several metrics says so (``Task.heatmap`` False) and gets none."""
    paths = []
    for (task, model), sub in frame.groupby(["task", "model"]):
        cls = task_by_name(task)
        if cls is not None and not cls.heatmap:  # e.g. rows that mix several metrics
            continue
        methods = methods_in(frame[frame["task"] == task])
        lengths = sorted(sub["length"].unique())
        ok = sub[sub["status"] == "ok"]
        table = ok.pivot_table(index="method", columns="length", values="score", aggfunc="mean")
        table = table.reindex(index=methods, columns=lengths)
        failed = sub[sub["status"] != "ok"].groupby(["method", "length"]).size()
        fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.55 * len(methods) + 1.6), layout="constrained")
        values = table.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_facecolor("#dddddd")
        low, high = (np.nanmin(values), np.nanmax(values)) if np.isfinite(values).any() else (0.0, 1.0)
        for i, method in enumerate(methods):
            for j, length in enumerate(lengths):
                value = table.iloc[i, j]
                text = "n/a" if np.isnan(value) else f"{value:.3g}"
                if (method, length) in failed.index and np.isnan(value):
                    text = sub[(sub["method"] == method) & (sub["length"] == length)]["status"].iloc[0].upper()
                # viridis is light on top
                bright = np.isnan(value) or (high > low and (value - low) / (high - low) > 0.6)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        metric = sub["metric"].iloc[0]
        ax.set_xticks(range(len(lengths)), [length_label(v) for v in lengths])
        ax.set_yticks(range(len(methods)), [style(m)["label"] for m in methods])
        for label, method in zip(ax.get_yticklabels(), methods):
            label.set_color(style(method)["color"])
        ax.set_xlabel(length_axis_label(task))
        ax.set_title(f"{task} ({metric}, mean): {model}")
        paths += _save(fig, out_dir, f"heatmap_{task}_{model}")
    return paths


DEPTH_BINS = 5  # rows of a depth map: equal fifths of the filler, start to end
DEPTH_MAP_COLUMNS = 5  # panels per row of the depth figure


def plot_depth_map(frame: pd.DataFrame, task: str, figure: Figure, out_dir: Path) -> list[Path]:
    """Accuracy by needle depth (rows: ``DEPTH_BINS`` equal bins of the ``depth`` column) and length
    (columns), one panel per method and a row of panels per model; cells read "retrieved/samples"."""
    rows = frame[(frame["task"] == task) & (frame["status"] == "ok")]
    if rows.empty or "depth" not in rows.columns:
        return []
    rows = rows.dropna(subset=["depth"]).assign(
        depth_bin=lambda r: np.minimum((r["depth"].astype(float) * DEPTH_BINS).astype(int), DEPTH_BINS - 1))
    methods, models = methods_in(rows), sorted(rows["model"].unique())
    lengths = sorted(rows["length"].unique())
    columns = min(DEPTH_MAP_COLUMNS, len(methods))
    rows_per_model = -(-len(methods) // columns)
    fig, axes = plt.subplots(len(models) * rows_per_model, columns, squeeze=False, layout="constrained",
                             figsize=(0.55 * len(lengths) * columns + 1.5, 2.4 * len(models) * rows_per_model + 0.4))
    for m in range(len(models)):  # the last row of each model's panels may have empty places
        for ax in axes[(m + 1) * rows_per_model - 1][len(methods) - (rows_per_model - 1) * columns:]:
            ax.axis("off")
    edges = np.linspace(0, 1, DEPTH_BINS + 1)
    image = None
    for m, model in enumerate(models):
        panels = axes[m * rows_per_model : (m + 1) * rows_per_model].flat
        for k, (ax, method) in enumerate(zip(panels, methods)):
            cell = rows[(rows["model"] == model) & (rows["method"] == method)]
            # (bin, length) -> retrieved, samples; cells without rows (or a method without any) are NaN
            grid = cell.groupby(["depth_bin", "length"])["score"].agg(["sum", "count"]).reindex(
                pd.MultiIndex.from_product([range(DEPTH_BINS), lengths]))
            hits, counts = (grid[c].to_numpy(dtype=float).reshape(DEPTH_BINS, len(lengths)) for c in ("sum", "count"))
            accuracy = hits / counts
            image = ax.imshow(np.ma.masked_invalid(accuracy), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            ax.set_facecolor("#dddddd")
            for i in range(DEPTH_BINS):
                for j in range(len(lengths)):
                    if not np.isnan(accuracy[i, j]):
                        ax.text(j, i, f"{int(hits[i, j])}/{int(counts[i, j])}", ha="center", va="center",
                                fontsize=6)
            st = style(method)
            ax.set_title(f"{st['label']}: {model}", fontsize=8, color=st["color"])
            ax.set_xticks(range(len(lengths)), [length_label(v) for v in lengths], fontsize=7)
            ax.set_yticks(range(DEPTH_BINS), [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(edges[:-1], edges[1:])],
                          fontsize=7)
            if k % columns == 0:
                ax.set_ylabel(figure.ylabel, fontsize=7)
            if k >= len(methods) - columns:  # the lowest panel of its column
                ax.set_xlabel(length_axis_label(task), fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, pad=0.01, aspect=30).set_label(
        "accuracy (cells: retrieved / samples); grey = no rows", fontsize=7)
    fig.suptitle(figure.title, fontsize=10)
    return _save(fig, out_dir, figure.file)


def plot_hidden_curves(frame: pd.DataFrame, task: str, figure: Figure, out_dir: Path) -> list[Path]:
    """Paper Figure 2: per (model, layer, dimension) a panel of value vs position, one line per
    method (its longest input), the training length dashed, the threshold (Origin's value at T - 1,
    harness.analysis.panel_thresholds) dotted, and an x at each method's first crossing of it
    (harness.analysis.first_crossing)."""
    rows = frame[(frame["task"] == task) & (frame["status"] == "ok")]
    if rows.empty:
        return []
    rows = longest_curves(rows)
    thresholds = panel_thresholds(rows)
    panels = rows[["model", "layer", "dim"]].drop_duplicates().sort_values(["model", "layer", "dim"]).to_numpy()
    columns = min(2, len(panels))
    many = rows["method"].nunique() > LEGEND_INSIDE_MAX
    fig, axes = plt.subplots(-(-len(panels) // columns), columns, squeeze=False, layout="constrained",
                             figsize=(5.2 * columns + (2.2 if many else 0), 3.4 * -(-len(panels) // columns)))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (model, layer, dim) in zip(axes.flat, panels):
        cell = rows[(rows["model"] == model) & (rows["layer"] == layer) & (rows["dim"] == dim)]
        t, threshold = int(cell["train_length"].iloc[0]), thresholds[(model, layer, dim)]
        for method in sorted(cell["method"].unique(), key=series_order):
            st = style(method)
            curve = cell[cell["method"] == method].sort_values("position")
            ax.plot(curve["position"], curve["score"], color=st["color"], linewidth=1.1, label=st["label"])
            crossing = first_crossing(curve["position"], curve["score"], threshold, t)
            if crossing is not None:
                y = curve.loc[curve["position"] == crossing, "score"].iloc[0]
                ax.scatter([crossing], [y], marker="x", s=50, color=st["color"], zorder=5)
        ax.axhline(threshold, color="black", linestyle=":", linewidth=1, label="threshold (value at T)")
        ax.axvline(t, color="black", linestyle="--", linewidth=1, label=f"training length ({t})")
        # The first positions after BOS swing far outside the band the argument is about: off-scale.
        shown = np.r_[cell.loc[cell["position"] >= t / HIDDEN_SETTLED_FRACTION, "score"].to_numpy(), threshold]
        pad = 0.08 * (shown.max() - shown.min()) or 1e-3
        ax.set_ylim(shown.min() - pad, shown.max() + pad)
        ax.set_title(f"{model}: layer {int(layer)}, dim {int(dim)}", fontsize=9)
        ax.set_xlabel("position")
        ax.set_ylabel(figure.ylabel)
        ax.grid(alpha=0.3)
    # Every panel's entries, once each (the first panel may lack a method), the methods in their order.
    from matplotlib.lines import Line2D

    entries = {}
    for ax in axes.flat[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    entries["x: first crossing past T"] = Line2D([], [], marker="x", linestyle="none", color="black")
    methods = [style(m)["label"] for m in sorted(rows["method"].unique(), key=series_order)]
    labels = [label for label in methods if label in entries] + [label for label in entries if label not in methods]
    handles = [entries[label] for label in labels]
    if many:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    else:
        axes.flat[0].legend(handles, labels, fontsize=6, loc="best", framealpha=0.8)
    fig.suptitle(figure.title, fontsize=10)
    return _save(fig, out_dir, figure.file)


ATTENTION_COLUMNS = 5  # panels (methods) per row of an attention-map figure
ATTENTION_FLOOR = 1e-4  # the log colour scale of attention maps: [floor, 1]; smaller weights (and 0) at the floor


def attention_grid(cell: pd.DataFrame) -> np.ndarray:
    """A (grid, grid) array of one map's rows (query bin x key bin); NaN where there is no row
    (key bins after the query bin: the task writes none, causal attention puts nothing there)."""
    grid = int(max(cell["query_bin"].max(), cell["key_bin"].max())) + 1
    values = np.full((grid, grid), np.nan)
    values[cell["query_bin"].to_numpy(dtype=int), cell["key_bin"].to_numpy(dtype=int)] = cell["score"].to_numpy(float)
    return values


def plot_attention_maps(frame: pd.DataFrame, task: str, figure: Figure, out_dir: Path) -> list[Path]:
    """The paper's Figures 11-12 and 15-16: per (model, length, layer, head) a row of panels, one
    per method (up to ``ATTENTION_COLUMNS`` a row), each the pooled attention map (query position
    down, key position across, both in tokens) on one log colour scale, [``ATTENTION_FLOOR``, 1],
    shared by every panel; the training length dashed on both axes. A method whose length failed
    says OOM/ERR in its panel, one without rows says so."""
    from matplotlib.colors import LogNorm

    rows = frame[frame["task"] == task]
    if rows.empty:
        return []
    ok = rows[rows["status"] == "ok"]
    methods = methods_in(rows)
    keys = ["model", "length", "layer", "head"]
    blocks = [tuple(b) for b in ok[keys].drop_duplicates().to_numpy()] if len(ok) else []
    for model, length in rows[["model", "length"]].drop_duplicates().to_numpy():  # lengths where every method failed
        if not any(b[0] == model and b[1] == length for b in blocks):
            blocks.append((model, length, None, None))
    blocks.sort(key=lambda b: (b[0], b[1], -1 if b[2] is None else b[2], -2 if b[3] is None else b[3]))
    columns = min(ATTENTION_COLUMNS, len(methods))
    per_block = -(-len(methods) // columns)
    fig, axes = plt.subplots(len(blocks) * per_block, columns, squeeze=False, layout="constrained",
                             figsize=(2.6 * columns + 1.0, 3.2 * len(blocks) * per_block + 0.5))
    norm = LogNorm(vmin=ATTENTION_FLOOR, vmax=1.0)
    cmap = plt.get_cmap("magma").with_extremes(bad="white")
    image = None
    for b, (model, length, layer, head) in enumerate(blocks):
        panels = list(axes[b * per_block : (b + 1) * per_block].flat)
        for ax in panels[len(methods):]:
            ax.axis("off")
        heads = "" if layer is None else ("mean over heads" if head < 0 else f"head {int(head)}")
        where = f"{model}, {length_label(length)}" + ("" if layer is None else f", layer {int(layer)}, {heads}")
        for k, (ax, method) in enumerate(zip(panels, methods)):
            st = style(method)
            ax.set_title(f"{st['label']}\n{where}", fontsize=7, color=st["color"])
            everything = rows[(rows["model"] == model) & (rows["method"] == method) & (rows["length"] == length)]
            cell = ok[(ok["model"] == model) & (ok["method"] == method) & (ok["length"] == length)
                      & (ok["layer"] == layer) & (ok["head"] == head)] if layer is not None else ok.iloc[:0]
            if cell.empty:
                failed = everything[everything["status"] != "ok"]
                ax.text(0.5, 0.5, failed["status"].iloc[0].upper() if len(failed) else "no rows", ha="center",
                        va="center", fontsize=9, color=st["color"], transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            tokens = int(cell["tokens"].iloc[0])
            values = attention_grid(cell)
            image = ax.imshow(np.ma.masked_invalid(np.maximum(values, ATTENTION_FLOOR)), cmap=cmap, norm=norm,
                              extent=(0, tokens, tokens, 0), interpolation="nearest")
            t = cell["train_length"].iloc[0] if "train_length" in cell else None
            t = configured_train_length(model) if t is None or pd.isna(t) else int(t)
            if t is not None and t < tokens:
                ax.axvline(t, color="#00c8ff", linestyle="--", linewidth=0.9)
                ax.axhline(t, color="#00c8ff", linestyle="--", linewidth=0.9)
            ax.tick_params(labelsize=6)
            if k % columns == 0:
                ax.set_ylabel("query position (tokens)", fontsize=7)
            if k >= len(methods) - columns:  # the lowest panel of its column in this block
                ax.set_xlabel("key position (tokens)", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, pad=0.01, aspect=40).set_label(
            f"attention weight of the query bin on the key bin (log; <= {ATTENTION_FLOOR:g} at the bottom); "
            "white: keys after the queries", fontsize=7)
    fig.suptitle(f"{figure.title}: weights pooled to bins of query and key positions\n(mean over a query bin's "
                 "queries of each query's total weight on the key bin); dashed: training length", fontsize=8)
    return _save(fig, out_dir, figure.file)


# Figure.kind (tasks.base.FIGURE_KINDS, the one list of them) -> the function that draws it
PLOTS = {"accuracy": plot_metric_vs_length, "mean_std": plot_metric_vs_length,
         "memory_and_latency": plot_memory_and_latency, "depth_map": plot_depth_map, "hidden_curve": plot_hidden_curves,
         "attention_map": plot_attention_maps}
if set(PLOTS) != set(FIGURE_KINDS):  # a kind a task may state must have a drawing, and only those
    raise ImportError(f"plots.figures draws the figure kinds {sorted(PLOTS)}, tasks.base.FIGURE_KINDS lists "
                      f"{sorted(FIGURE_KINDS)}")


def plot_task(frame: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """Every figure task ``task`` states (none for a task without a class in this checkout)."""
    cls = task_by_name(task)
    figures = cls.figures if cls is not None else ()
    return [path for figure in figures for path in PLOTS[figure.kind](frame, task, figure, out_dir)]


def captions() -> dict[str, str]:
    """{task name: the captions of its figures}, for the figures' index page."""
    return {name: " ".join(f.caption for f in cls.figures) for name, cls in TASKS.items() if cls.figures}


def write_tables(frame: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """The task's tables of the collected rows (``Task.tables``), as CSV files next to the figures."""
    cls = task_by_name(task)
    paths = []
    for name, table in (cls.tables(frame) if cls is not None else {}).items():
        out_dir.mkdir(parents=True, exist_ok=True)
        paths.append(out_dir / f"{name}.csv")
        table.to_csv(paths[-1], index=False)
    return paths


def plot_settings(frame: pd.DataFrame, labelled: pd.Series, task: str, out_dir: Path) -> list[Path]:
    """The task's score-vs-length figures once per method that has labelled series (rows run with
    ``label=...``, e.g. the sensitivity and ablation sweeps): that method's plain series, its
    labelled ones and the baseline (Origin), in ``<figure>_<method>_settings``. The main figures
    show plain series only, so settings sweeps never crowd them."""
    cls = task_by_name(task)
    figures = [f for f in (cls.figures if cls is not None else ()) if f.kind in ("accuracy", "mean_std")]
    rows = frame[frame["task"] == task]
    methods = sorted({split_series(series)[0] for series in rows.loc[labelled[rows.index], "method"]},
                     key=series_order)
    paths = []
    for method in methods:
        label = METHODS[method].label if method in METHODS else method
        mine = rows["method"].map(lambda series: split_series(series)[0] == method) | (rows["method"] == baseline())
        for figure in figures:
            variant = dataclasses.replace(figure, file=f"{figure.file}_{method}_settings",
                                          title=f"{figure.title}, {label}'s settings")
            paths += PLOTS[figure.kind](rows[mine], task, variant, out_dir)
    return paths


def build_all(frame: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    """Every figure the table has data for, plus the heat maps; returns {task name or "heatmaps": paths}.
    Labelled rows (``label=...``) are drawn only in the settings figures (:func:`plot_settings`)."""
    labelled = frame["label"].notna() if "label" in frame.columns else pd.Series(False, index=frame.index)
    frame = series_by_settings(frame)
    plain = frame[~labelled]
    built = {task: plot_task(plain, task, out_dir) + plot_settings(frame, labelled, task, out_dir)
             + write_tables(plain, task, out_dir)
             for task in sorted(frame["task"].unique())}
    built["heatmaps"] = plot_heatmaps(plain, out_dir) if not plain.empty else []
    return {name: paths for name, paths in built.items() if paths}

"""The paper's figures, drawn from the tidy results table (``results/all.csv``).

Each ``plot_*`` function takes the whole table, draws whatever models, methods and lengths it
contains, and returns the written paths (PNG and PDF) or [] when the table has no row for it.
Every method has one colour and marker in every figure (a method this module does not know gets
one from its name, the same everywhere); a method with no row for a model is still listed in that
panel's legend as "no data", and failed cells are marked, never dropped silently. Lengths double
in every sweep, so length axes are log2. Accuracies carry 95% Wilson intervals, and every point's
number of samples is written above the panel. Files carry no timestamps: the same rows give
byte-identical files, so redrawing leaves ``git status`` clean.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from harness import REPO_ROOT  # noqa: E402

METHODS = ["origin", "dynamic-ntk", "rerope", "leaky-rerope", "mesa", "origin (eager)"]
METHOD_STYLE = {
    "origin": dict(color="#444444", marker="o", label="Origin"),
    "dynamic-ntk": dict(color="#1f77b4", marker="s", label="Dynamic-NTK"),
    "rerope": dict(color="#ff7f0e", marker="^", label="ReRoPE"),
    "leaky-rerope": dict(color="#2ca02c", marker="v", label="Leaky-ReRoPE"),
    "mesa": dict(color="#d62728", marker="D", label="Mesa"),
    # Origin with transformers' eager attention (full L x L scores), the paper's baseline
    "origin (eager)": dict(color="#999999", marker="x", label="Origin (eager attention)"),
}
MODEL_CONFIGS = REPO_ROOT / "conf" / "model"


_EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_EXTRA_MARKERS = ["P", "X", "*", "h", "<", ">"]
# No timestamps or tool versions in the files: the same rows draw byte-identical figures.
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}
Z95 = 1.959963984540054


def style(method: str) -> dict:
    """The method's colour, marker and label; an unknown method's come from a hash of its name."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    digest = hashlib.sha1(method.encode()).digest()
    return dict(color=_EXTRA_COLORS[digest[0] % len(_EXTRA_COLORS)],
                marker=_EXTRA_MARKERS[digest[1] % len(_EXTRA_MARKERS)], label=method)


def wilson(successes, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) of a binomial proportion, elementwise."""
    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


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
    present = list(frame["method"].unique())
    return [m for m in METHODS if m in present] + sorted(m for m in present if m not in METHODS)


def train_length(model: str) -> int | None:
    """The model's training length from conf/model/<model>.yaml (None if unknown)."""
    path = MODEL_CONFIGS / f"{model}.yaml"
    return int(OmegaConf.load(path).train_length) if path.exists() else None


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


def _mark_training_length(ax, model: str) -> None:
    t = train_length(model)
    if t is not None:
        ax.axvline(t, color="black", linestyle="--", linewidth=1, label=f"training length ({t})")


def _metric_vs_length(frame: pd.DataFrame, task: str, ylabel: str, title: str, out_dir: Path, name: str,
                      xlabel: str = "input length (tokens; k = 1024)", band: str = "std", ylim=None) -> list[Path]:
    """One panel per model: per method and length the mean score with its interval, failed cells marked.

    band="wilson": scores are 0/1 successes; error bars are 95% Wilson intervals. band="std": a
    shaded band of +- one standard deviation over samples."""
    rows = frame[frame["task"] == task]
    if rows.empty:
        return []
    all_methods = methods_in(frame)
    models = sorted(rows["model"].unique())
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = rows[rows["model"] == model]
        counts: dict[int, list[int]] = {}
        for rank, method in enumerate(all_methods):
            st = style(method)
            # a small sideways shift per method (in log2 units), so equal values do not hide each other
            shift = 2.0 ** ((rank - (len(all_methods) - 1) / 2) * 0.025)
            cell = sub[sub["method"] == method]
            ok = cell[cell["status"] == "ok"]
            if cell.empty:
                ax.plot([], [], color=st["color"], marker=st["marker"], linestyle="none", label=f"{st['label']} (no data)")
                continue
            stats = ok.groupby("length")["score"].agg(["mean", "std", "count", "sum"]).reset_index()
            for length, n in zip(stats["length"], stats["count"]):
                counts.setdefault(int(length), []).append(int(n))
            x = stats["length"] * shift
            if band == "wilson":
                low, high = wilson(stats["sum"], stats["count"])
                yerr = np.vstack([stats["mean"] - low, high - stats["mean"]]).clip(0)
                ax.errorbar(x, stats["mean"], yerr=yerr, color=st["color"], marker=st["marker"], capsize=3,
                            linewidth=1.4, elinewidth=1, label=st["label"])
            else:
                ax.plot(x, stats["mean"], color=st["color"], marker=st["marker"], label=st["label"])
                if (stats["count"] > 1).any():
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
        if x_line := task_xline(task):
            x_line(ax, model)
        log2_length_axis(ax, sub["length"], xlabel)
        samples_axis(ax, counts)
        ax.set_title(f"{title}: {model}")
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, out_dir, name)


def task_xline(task: str):
    return _mark_training_length if task in ("passkey", "ppl", "speed") else None


def plot_passkey(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 3: passkey accuracy vs input length, with 95% Wilson intervals."""
    return _metric_vs_length(frame, "passkey", "accuracy (95% Wilson interval)", "Passkey retrieval", out_dir,
                             "passkey_accuracy", band="wilson", ylim=(-0.05, 1.05))


def plot_ppl(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 4: NLL (nats per token) vs input length."""
    return _metric_vs_length(frame, "ppl", "NLL (nats/token, mean +- std over documents)", "Perplexity", out_dir,
                             "ppl_nll")


def plot_longeval(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 7: LongEval line-retrieval accuracy vs number of lines."""
    return _metric_vs_length(frame, "longeval", "accuracy (95% Wilson interval)", "LongEval lines", out_dir,
                             "longeval_accuracy", xlabel="number of lines (not tokens)", band="wilson",
                             ylim=(-0.05, 1.05))


def plot_speed(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 5: peak memory (bars) and prefill latency (lines) vs length; decode in a second row."""
    rows = frame[(frame["task"] == "speed") & (frame["status"] == "ok")]
    everything = frame[frame["task"] == "speed"]
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
        width = 0.8 * gap / max(1, len(all_methods))
        ax_time = ax_mem.twinx()
        for i, method in enumerate(all_methods):
            st = style(method)
            cell = sub[sub["method"] == method].groupby("length")[["peak_mb", "prefill_s", "decode_ms_per_token"]].mean()
            cell = cell.reindex(lengths)
            offset = (i - (len(all_methods) - 1) / 2) * width
            ax_mem.bar(x + offset, cell["peak_mb"] / 1024, width, color=st["color"], alpha=0.45,
                       label=f"{st['label']} memory" if cell["peak_mb"].notna().any() else f"{st['label']} (no data)")
            ax_time.plot(x, cell["prefill_s"], color=st["color"], marker=st["marker"], label=f"{st['label']} prefill")
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
        ax_mem.set_title(f"Memory and prefill latency: {model}")
        ax_dec.set_title(f"Decode latency: {model}")
        handles = ax_mem.get_legend_handles_labels()[0] + ax_time.get_legend_handles_labels()[0]
        labels = ax_mem.get_legend_handles_labels()[1] + ax_time.get_legend_handles_labels()[1]
        ax_mem.legend(handles, labels, fontsize=6, ncol=2, loc="upper left", framealpha=0.8)
        ax_dec.legend(fontsize=7, loc="upper left", framealpha=0.8)
    return _save(fig, out_dir, "speed_memory")


def plot_heatmaps(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Method x length mean score per (task, model), for quick reading; missing cells are grey 'n/a'."""
    paths = []
    for (task, model), sub in frame.groupby(["task", "model"]):
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
                bright = np.isnan(value) or (high > low and (value - low) / (high - low) > 0.6)  # viridis is light on top
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        metric = sub["metric"].iloc[0]
        ax.set_xticks(range(len(lengths)), [length_label(v) for v in lengths])
        ax.set_yticks(range(len(methods)), [style(m)["label"] for m in methods])
        for label, method in zip(ax.get_yticklabels(), methods):
            label.set_color(style(method)["color"])
        ax.set_xlabel("number of lines (not tokens)" if task == "longeval" else "input length (tokens; k = 1024)")
        ax.set_title(f"{task} ({metric}, mean): {model}")
        paths += _save(fig, out_dir, f"heatmap_{task}_{model}")
    return paths


FIGURES = {"passkey": plot_passkey, "ppl": plot_ppl, "speed": plot_speed, "longeval": plot_longeval}


def series_by_attention(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows run with a non-default attention implementation become a series of their own
    ("origin (eager)"), so they are never averaged with the same method's sdpa rows."""
    if "attn_implementation" not in frame.columns:
        return frame
    other = frame["attn_implementation"].fillna("sdpa") != "sdpa"
    if not other.any():
        return frame
    frame = frame.copy()
    frame.loc[other, "method"] = frame.loc[other, "method"] + " (" + frame.loc[other, "attn_implementation"] + ")"
    return frame


def build_all(frame: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    """Every figure the table has data for, plus the heat maps; returns {figure name: paths}."""
    frame = series_by_attention(frame)
    built = {name: fn(frame, out_dir) for name, fn in FIGURES.items()}
    built["heatmaps"] = plot_heatmaps(frame, out_dir) if not frame.empty else []
    return {name: paths for name, paths in built.items() if paths}

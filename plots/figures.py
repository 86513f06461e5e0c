"""The paper's figures, drawn from the tidy results table (``results/all.csv``).

Each ``plot_*`` function takes the whole table, draws whatever models, methods and lengths it
contains, and returns the written paths (PNG and PDF) or [] when the table has no row for it.
Every method has one colour in every figure; a method with no row for a model is still listed in
that panel's legend as "no data", and failed cells are marked, never dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from harness import REPO_ROOT  # noqa: E402

METHODS = ["origin", "dynamic-ntk", "rerope", "leaky-rerope", "mesa"]
METHOD_STYLE = {
    "origin": dict(color="#444444", marker="o", label="Origin"),
    "dynamic-ntk": dict(color="#1f77b4", marker="s", label="Dynamic-NTK"),
    "rerope": dict(color="#ff7f0e", marker="^", label="ReRoPE"),
    "leaky-rerope": dict(color="#2ca02c", marker="v", label="Leaky-ReRoPE"),
    "mesa": dict(color="#d62728", marker="D", label="Mesa"),
}
MODEL_CONFIGS = REPO_ROOT / "conf" / "model"


def style(method: str) -> dict:
    return METHOD_STYLE.get(method, dict(color="#9467bd", marker="x", label=method))


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
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
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
                      xlabel: str = "input length (tokens)", band: str = "std", ylim=None) -> list[Path]:
    """One panel per model: mean score per method and length, a band, failed cells marked."""
    rows = frame[frame["task"] == task]
    if rows.empty:
        return []
    all_methods = methods_in(frame)
    models = sorted(rows["model"].unique())
    span = float(rows["length"].max() - rows["length"].min()) or float(rows["length"].max())
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = rows[rows["model"] == model]
        for rank, method in enumerate(all_methods):
            st = style(method)
            # a small sideways shift per method, so equal values (e.g. all 0.0) do not hide each other
            shift = (rank - (len(all_methods) - 1) / 2) * 0.008 * span
            cell = sub[sub["method"] == method]
            ok = cell[cell["status"] == "ok"]
            if cell.empty:
                ax.plot([], [], color=st["color"], marker=st["marker"], linestyle="none", label=f"{st['label']} (no data)")
                continue
            stats = ok.groupby("length")["score"].agg(["mean", "std", "count"]).reset_index()
            stats["length"] = stats["length"] + shift
            ax.plot(stats["length"], stats["mean"], color=st["color"], marker=st["marker"], label=st["label"])
            if band == "std" and (stats["count"] > 1).any():
                spread = stats["std"].fillna(0)
                low, high = stats["mean"] - spread, stats["mean"] + spread
                if ylim is not None:  # an accuracy band never leaves [0, 1]
                    low, high = low.clip(0, 1), high.clip(0, 1)
                ax.fill_between(stats["length"], low, high,
                                color=st["color"], alpha=0.15, linewidth=0)
            failed = cell[cell["status"] != "ok"].groupby("length")["status"].agg(lambda s: s.mode().iloc[0])
            failed = failed[~failed.index.isin(ok["length"])]  # lengths with no ok sample at all
            for length, status in failed.items():
                y = ax.get_ylim()[0] if ylim is None else ylim[0]
                ax.scatter([length], [y], marker="x", s=60, color=st["color"], clip_on=False, zorder=5)
                ax.annotate(status.upper(), (length, y), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=7, color=st["color"])
        if x := task_xline(task):
            x(ax, model)
        ax.set_title(f"{title}: {model}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _save(fig, out_dir, name)


def task_xline(task: str):
    return _mark_training_length if task in ("passkey", "ppl", "speed") else None


def plot_passkey(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 3: passkey accuracy vs input length, mean +- one standard deviation."""
    return _metric_vs_length(frame, "passkey", "accuracy (mean +- std over samples)", "Passkey retrieval", out_dir,
                             "passkey_accuracy", ylim=(-0.05, 1.05))


def plot_ppl(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 4: NLL (nats per token) vs input length."""
    return _metric_vs_length(frame, "ppl", "NLL (nats/token, mean over documents)", "Perplexity", out_dir, "ppl_nll")


def plot_longeval(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Paper Figure 7: LongEval line-retrieval accuracy vs number of lines."""
    return _metric_vs_length(frame, "longeval", "accuracy (mean +- std over samples)", "LongEval lines", out_dir,
                             "longeval_accuracy", xlabel="number of lines", ylim=(-0.05, 1.05))


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
        x = np.arange(len(lengths))
        width = 0.8 / max(1, len(all_methods))
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
                                (j + offset, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=7, color=st["color"], rotation=90)
        for ax in (ax_mem, ax_dec):
            ax.set_xticks(x, [str(v) for v in lengths])
            ax.set_xlabel("input length (tokens)")
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
        ax.set_xticks(range(len(lengths)), [str(v) for v in lengths])
        ax.set_yticks(range(len(methods)), [style(m)["label"] for m in methods])
        ax.set_xlabel("number of lines" if task == "longeval" else "input length (tokens)")
        ax.set_title(f"{task} ({metric}, mean): {model}")
        paths += _save(fig, out_dir, f"heatmap_{task}_{model}")
    return paths


FIGURES = {"passkey": plot_passkey, "ppl": plot_ppl, "speed": plot_speed, "longeval": plot_longeval}


def build_all(frame: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    """Every figure the table has data for, plus the heat maps; returns {figure name: paths}."""
    built = {name: fn(frame, out_dir) for name, fn in FIGURES.items()}
    built["heatmaps"] = plot_heatmaps(frame, out_dir) if not frame.empty else []
    return {name: paths for name, paths in built.items() if paths}

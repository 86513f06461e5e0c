"""Each figure builds from a small synthetic table, including missing and failed cells."""

import itertools

import numpy as np
import pandas as pd

from plots.__main__ import main as plots_main
from plots.figures import build_all, plot_heatmaps, plot_task


def table(tasks=("passkey", "ppl", "longeval", "speed"), models=("smollm2-135m", "tiny-random")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    metric = {"passkey": "accuracy", "ppl": "nll", "longeval": "accuracy", "speed": "prefill_s"}
    for task, model, method in itertools.product(tasks, models, ["origin", "rerope", "mesa"]):
        lengths = [200, 300] if task == "longeval" else [4096, 8192, 16384]
        for length, sample in itertools.product(lengths, range(3)):
            if model == "tiny-random" and method == "rerope":
                continue  # a method with no row for this model: must show as "no data"
            status = "oom" if (method == "rerope" and length == 16384) else "ok"
            score = float(rng.random() < 0.7) if metric[task] == "accuracy" else float(rng.normal(3, 0.3))
            row = dict(task=task, model=model, method=method, metric=metric[task], length=length, sample=sample,
                       status=status, score=score if status == "ok" else np.nan)
            if task == "speed" and status == "ok":
                row.update(prefill_s=length / 1000 * rng.uniform(0.5, 1.5), peak_mb=length / 10,
                           decode_ms_per_token=rng.uniform(20, 80))
            rows.append(row)
    return pd.DataFrame(rows)


def test_every_figure_builds(tmp_path):
    built = build_all(table(), tmp_path)
    assert set(built) == {"passkey", "ppl", "speed", "longeval", "heatmaps"}
    for paths in built.values():
        for path in paths:
            assert path.exists() and path.stat().st_size > 1000
    assert len(built["heatmaps"]) == 2 * 4 * 2  # png+pdf per (task, model)


def test_missing_method_is_listed_and_oom_cells_marked(tmp_path):
    fig = _figure_of(lambda frame, out: plot_task(frame, "passkey", out), table(tasks=("passkey",)), tmp_path)
    tiny = [ax for ax in fig.axes if "tiny-random" in ax.get_title()][0]
    smol = [ax for ax in fig.axes if "smollm2" in ax.get_title()][0]
    labels = [t.get_text() for t in tiny.get_legend().get_texts()]
    # one line, not one per method
    assert "no rows: ReRoPE" in labels and not any("no data" in label for label in labels)
    assert "no rows" not in " ".join(t.get_text() for t in smol.get_legend().get_texts())
    assert any(t.get_text() == "OOM" for t in smol.texts)
    assert any("training length (8192)" in label for label in smol.get_legend_handles_labels()[1])


def test_speed_and_heatmap_handle_failures(tmp_path):
    frame = table(tasks=("speed",), models=("smollm2-135m",))
    assert plot_task(frame, "speed", tmp_path)
    assert plot_heatmaps(frame, tmp_path)


def test_speed_legend_has_one_entry_per_method_and_one_line_for_those_without_rows(tmp_path):
    frame = table(tasks=("speed",))  # no ReRoPE rows for tiny-random
    fig = _figure_of(lambda f, out: plot_task(f, "speed", out), frame, tmp_path)
    memory = [ax for ax in fig.axes if ax.get_title() == "Memory and prefill latency: tiny-random"][0]
    labels = [t.get_text() for t in memory.get_legend().get_texts()]
    assert labels == ["Origin", "Mesa", "no rows: ReRoPE"]  # was: a "memory" and a "prefill" entry each, "(no data)"s
    assert len(memory.patches) == 2 * 3  # bars only for the methods with rows, no empty slot for ReRoPE


def test_tasks_without_rows_draw_nothing(tmp_path):
    built = build_all(table(tasks=("passkey",)), tmp_path)
    assert set(built) == {"passkey", "heatmaps"}


def test_cli_writes_index(tmp_path):
    csv = tmp_path / "all.csv"
    table().to_csv(csv, index=False)
    assert plots_main(["--results", str(csv), "--out", str(tmp_path / "figs")]) == 0
    index = (tmp_path / "figs" / "index.md").read_text()
    assert "passkey_accuracy.png" in index and "speed_memory.png" in index
    assert plots_main(["--results", str(tmp_path / "missing.csv")]) == 2


def test_the_same_rows_draw_byte_identical_files(tmp_path):
    import time

    first = build_all(table(), tmp_path / "a")
    time.sleep(1.1)  # a timestamp in a file (PDF CreationDate has seconds) would differ now
    second = build_all(table(), tmp_path / "b")
    names = sorted(p.name for paths in first.values() for p in paths)
    assert names == sorted(p.name for paths in second.values() for p in paths)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_figures_are_written_next_to_their_rows(tmp_path):
    rows = tmp_path / "my-results"
    rows.mkdir()
    table(tasks=("passkey",)).to_csv(rows / "all.csv", index=False)
    assert plots_main(["--results", str(rows / "all.csv")]) == 0
    assert (rows / "figures" / "passkey_accuracy.png").is_file()
    assert "from `../all.csv`" in (rows / "figures" / "index.md").read_text()


def test_a_results_directory_is_accepted_as_collect_and_compare_accept_it(tmp_path):
    """``--results <dir>`` used to say that an existing results directory "does not exist"."""
    job = tmp_path / "res" / "runs" / "passkey" / "smollm2-135m"
    job.mkdir(parents=True)
    table(tasks=("passkey",), models=("smollm2-135m",)).to_csv(job / "origin-0123456789.csv", index=False)
    assert plots_main(["--results", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res" / "figures" / "passkey_accuracy.png").is_file()


def test_help_names_the_command(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit:
        plots_main(["--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m plots ")


def test_wilson_interval():
    from plots.figures import wilson

    low, high = wilson([0, 2, 1, 7], [4, 2, 2, 10])
    assert low[0] == 0 and abs(high[0] - 3.8415 / 7.8415) < 1e-4  # 0 of 4: up to 0.49, not a zero-width band
    assert abs(low[1] - 2 / (2 + 3.8415)) < 1e-4 and high[1] == 1
    assert abs(low[2] - 0.0945) < 1e-3 and abs(high[2] - 0.9055) < 1e-3
    assert abs(low[3] - 0.3968) < 1e-3 and abs(high[3] - 0.8922) < 1e-3


def _figure_of(plot, frame, tmp_path):
    import matplotlib.pyplot as plt

    captured = {}
    real_save = plt.Figure.savefig

    def grab(fig, *args, **kwargs):
        captured.setdefault("fig", fig)
        return real_save(fig, *args, **kwargs)

    plt.Figure.savefig = grab
    try:
        plot(frame, tmp_path)
    finally:
        plt.Figure.savefig = real_save
    return captured["fig"]


def test_accuracy_has_wilson_bars_sample_counts_and_a_log2_length_axis(tmp_path):
    from matplotlib.collections import PolyCollection
    from matplotlib.container import ErrorbarContainer

    fig = _figure_of(lambda frame, out: plot_task(frame, "passkey", out), table(tasks=("passkey",)), tmp_path)
    smol = [ax for ax in fig.axes if "smollm2" in ax.get_title()][0]
    assert smol.get_xscale() == "log" and smol.xaxis.get_transform().base == 2
    assert [t.get_text() for t in smol.get_xticklabels()] == ["4k", "8k", "16k"]
    assert len([c for c in smol.containers if isinstance(c, ErrorbarContainer)]) == 3  # one per method with rows
    assert not [c for c in smol.collections if isinstance(c, PolyCollection)]  # no +- std bands
    counts = [t.get_text() for ax in smol.child_axes for t in ax.get_xticklabels()]
    assert counts == ["n=3", "n=3", "n=0-3"]  # samples per method and length, above the panel (ReRoPE OOM at 16k)


def test_every_method_has_one_style_everywhere(tmp_path):
    from harness.methods import METHODS
    from plots.figures import style

    series = [*METHODS, "origin (eager)"]  # every method, and the eager series of the figures
    assert style("no-such-method") == style("no-such-method") and style("no-such-method")["label"] == "no-such-method"
    known = {style(m)["color"] for m in series}
    assert style("no-such-method")["color"] not in known and style("retired-method")["color"] not in known
    assert style("no-such-method")["color"] != style("retired-method")["color"]  # unknown methods are told apart too
    heatmap = _figure_of(plot_heatmaps, table(tasks=("passkey",), models=("smollm2-135m",)), tmp_path)
    labels = heatmap.axes[0].get_yticklabels()
    assert [(t.get_text(), t.get_color()) for t in labels] == [
        (style(m)["label"], style(m)["color"]) for m in ("origin", "rerope", "mesa")]
    assert len({style(m)["color"] for m in series}) == len(series)
    assert len({style(m)["marker"] for m in series}) == len(series)
    assert (style("mesa")["label"], style("mesa")["color"]) == (METHODS["mesa"].label, METHODS["mesa"].color)


def test_eager_rows_are_their_own_series():
    """Origin with eager attention (the paper's baseline) is drawn beside Origin with sdpa, never averaged into it."""
    from harness.analysis import series_by_settings
    from plots.figures import style

    frame = table(tasks=("speed",), models=("smollm2-135m",))
    frame["attn_implementation"] = "sdpa"
    eager = frame[frame["method"] == "origin"].assign(attn_implementation="eager", prefill_s=99.0)
    series = series_by_settings(pd.concat([frame, eager], ignore_index=True))
    assert set(series["method"]) == {"origin", "rerope", "mesa", "origin (eager)"}
    assert (series[series["method"] == "origin"]["prefill_s"] < 99).all()
    assert style("origin (eager)")["label"] == "Origin (eager attention)"
    assert series_by_settings(table()).equals(table())  # rows without the column are left alone


def test_labelled_rows_get_settings_figures_and_stay_out_of_the_main_ones(tmp_path, monkeypatch):
    import plots.figures as figures

    frame = table(tasks=("passkey",), models=("smollm2-135m",))
    scaled = frame[frame["method"] == "mesa"].assign(label="scaled-x4", score=1.0)
    drawn = []
    real = figures.plot_metric_vs_length

    def spy(rows, task, figure, out_dir):
        drawn.append((figure.file, sorted(rows["method"].unique())))
        return real(rows, task, figure, out_dir)

    monkeypatch.setitem(figures.PLOTS, "accuracy", spy)
    built = build_all(pd.concat([frame, scaled], ignore_index=True), tmp_path)
    assert dict(drawn) == {"passkey_accuracy": ["mesa", "origin", "rerope"],
                           "passkey_accuracy_mesa_settings": ["mesa", "mesa (scaled-x4)", "origin"]}
    assert tmp_path / "passkey_accuracy_mesa_settings.png" in built["passkey"]


def test_labelled_series_are_labelled_and_told_apart():
    from plots.figures import style

    variants = ["mesa", "mesa (scaled-x4)", "mesa (last chunk rerope)", "mesa (eager)"]
    assert style("mesa (scaled-x4)")["label"] == "Mesa (scaled-x4)"
    assert style("mesa (eager, scaled-x4)")["label"] == "Mesa (eager attention, scaled-x4)"
    looks = {(style(v)["color"], style(v)["marker"]) for v in variants}
    assert len(looks) == len(variants)


NINE = ["origin", "dynamic-ntk", "rerope", "leaky-rerope", "mesa", "streaming-llm", "lm-infinite", "self-extend",
        "yarn"]


def nine_methods() -> pd.DataFrame:
    """Passkey rows of the nine methods at the committed reproduction's lengths (12k and 16k are close on log2)."""
    rng = np.random.default_rng(1)
    rows = [dict(task="passkey", model="smollm2-135m", method=method, metric="accuracy", length=length, sample=sample,
                 status="ok", score=float(rng.random() < 0.6))
            for method in NINE for length in (4096, 8192, 12288, 16384) for sample in range(10 if length > 8192 else 2)]
    return pd.DataFrame(rows)


def _overlaps(boxes) -> list:
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_accuracy_with_nine_methods_is_readable(tmp_path):
    """The committed figure had its plot in ~40% of the width beside the legend, "12k16k" and "n=10n=10"
    running together, and nine error bars on top of each other at each length."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.container import ErrorbarContainer

    fig = _figure_of(lambda f, out: plot_task(f, "passkey", out), nine_methods(), tmp_path)
    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = [a for a in fig.axes if a.get_title().startswith("Passkey")][0]
    assert ax.get_window_extent().width > 0.75 * fig.bbox.width
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0 and legend.width <= ax.get_window_extent().width  # under the panel
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    counts = [t.get_window_extent(renderer) for child in ax.child_axes for t in child.get_xticklabels()]
    assert len(ticks) == len(counts) == 4 and not _overlaps(ticks) and not _overlaps(counts)
    # at every length the nine error bars stand apart: neighbours further apart than their caps are wide
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 9
    x = np.array([ax.transData.transform(np.c_[np.asarray(c.lines[0].get_xdata(), float),
                                               np.asarray(c.lines[0].get_ydata(), float)])[:, 0] for c in bars])
    cap = max(line.get_markersize() for c in bars for line in c.lines[1]) * fig.dpi / 72
    assert (np.diff(x, axis=0) > cap).all()
    assert (x[-1, :-1] < x[0, 1:]).all()  # and the groups of neighbouring lengths do not mix


def test_hidden_state_legend_lists_every_method_of_every_panel(tmp_path):
    from plots.figures import plot_hidden_curves
    from tasks.hidden import HiddenStateTask

    rows = []
    for dim, methods in ((1, ["origin", "rerope"]), (2, ["origin", "mesa"])):  # the first panel has no Mesa
        for method in methods:
            rows += [dict(task="hidden", model="m", method=method, length=256, status="ok", layer=0, dim=dim,
                          position=p, score=float(p) / 100, threshold=1.27, train_length=128, sample=p)
                     for p in range(0, 256, 8)]
    figure = HiddenStateTask.figures[0]
    fig = _figure_of(lambda f, out: plot_hidden_curves(f, "hidden", figure, out), pd.DataFrame(rows), tmp_path)
    legend = fig.axes[0].get_legend() or fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == ["Origin", "ReRoPE", "Mesa"] and "x: first crossing past T" in labels


def test_depth_map_has_a_colour_bar_length_labels_and_says_what_grey_means(tmp_path):
    from plots.figures import plot_depth_map
    from tasks.passkey import PasskeyTask

    frame = nine_methods().assign(depth=lambda r: (r["sample"] % 5) / 4)
    depth_figure = [f for f in PasskeyTask.figures if f.kind == "depth_map"][0]
    fig = _figure_of(lambda f, out: plot_depth_map(f, "passkey", depth_figure, out), frame, tmp_path)
    colorbar = [ax for ax in fig.axes if "grey = no rows" in ax.get_ylabel()]
    assert len(colorbar) == 1
    panels = [ax for ax in fig.axes if ax.get_title().endswith("smollm2-135m")]
    assert len(panels) == 9
    assert {ax.get_xlabel() for ax in panels[4:]} == {"input length (tokens; k = 1024)"}  # the lowest of each column


def test_depth_map_counts_retrievals_per_depth_bin_and_length(tmp_path):
    frame = table(tasks=("passkey",), models=("smollm2-135m",))
    frame["depth"] = (frame["sample"] * 0.45).clip(upper=1.0)  # samples 0, 1, 2 -> bins 0, 2, 4
    import matplotlib.pyplot as plt

    from plots.figures import plot_depth_map
    from tasks.passkey import PasskeyTask

    plot_task(frame, "passkey", tmp_path)
    assert (tmp_path / "passkey_depth.png").exists()

    depth_figure = [f for f in PasskeyTask.figures if f.kind == "depth_map"][0]
    fig = _figure_of(lambda f, out: plot_depth_map(f, "passkey", depth_figure, out), frame, tmp_path)
    mesa = [ax for ax in fig.axes if ax.get_title().startswith("Mesa")][0]
    cells = {t.get_text() for t in mesa.texts}
    ok = frame[(frame.method == "mesa") & (frame.status == "ok")]
    assert cells == {f"{int(s)}/1" for s in ok.score}  # one sample per (bin, length) cell
    plt.close(fig)


def attention_rows() -> pd.DataFrame:
    """The attention-map task's rows on the tiny model (Origin, Mesa), plus a failed ReRoPE length."""
    from harness.byte_tokenizer import ByteTokenizer
    from harness.methods import apply_method
    from tasks.attention_map import AttentionMapTask
    from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, tiny_model

    task = AttentionMapTask([400], tokenizer=ByteTokenizer(), train_length=TRAIN_LENGTH, layers=[0, -1], grid=32)
    frames = []
    for method in ("origin", "mesa"):
        model = apply_method(tiny_model(), method, **TINY_PARAMS[method])
        frames.append(pd.DataFrame(task.evaluate_length(model, 400)).assign(method=method, status="ok"))
    frames.append(pd.DataFrame([dict(method="rerope", status="oom", sample=-1)]))
    return pd.concat(frames, ignore_index=True).assign(model="tiny-random", task="attention-map", length=400,
                                                       metric="attention_weight")


def test_attention_map_draws_a_panel_per_method_with_one_colour_scale(tmp_path):
    from matplotlib.image import AxesImage

    from tasks.attention_map import AttentionMapTask

    rows = attention_rows()
    figure = AttentionMapTask.figures[0]
    fig = _figure_of(lambda f, out: plot_task(f, "attention-map", out), rows, tmp_path)
    assert (tmp_path / f"{figure.file}.png").exists() and (tmp_path / f"{figure.file}.pdf").exists()
    panels = [ax for ax in fig.axes if ax.get_title().split("\n")[0] in ("Origin", "ReRoPE", "Mesa")]
    assert len(panels) == 2 * 3  # two layers x three methods
    assert {ax.get_title().split("\n")[1] for ax in panels} == {"tiny-random, 400, layer 0, mean over heads",
                                                                 "tiny-random, 400, layer 1, mean over heads"}
    images = [image for ax in panels for image in ax.get_images() if isinstance(image, AxesImage)]
    assert len(images) == 4 and len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1  # one shared scale
    assert all(type(im.norm).__name__ == "LogNorm" for im in images)
    rerope = [ax for ax in panels if ax.get_title().startswith("ReRoPE")]
    assert all(any(t.get_text() == "OOM" for t in ax.texts) for ax in rerope)
    tokens = int(rows["tokens"].dropna().iloc[0])
    mesa = [ax for ax in panels if ax.get_title().startswith("Mesa")][0]
    assert mesa.get_images()[0].get_extent() == [0, tokens, tokens, 0]  # axes in token positions
    marks = [line for line in mesa.get_lines() if line.get_linestyle() == "--"]
    assert len(marks) == 2  # the training length on both axes
    # blank above the diagonal, drawn on and below it
    drawn = np.ma.getdata(mesa.get_images()[0].get_array())
    assert np.ma.getmaskarray(mesa.get_images()[0].get_array())[0, 1] and not np.isnan(drawn[5, 0])
    again = build_all(rows, tmp_path / "again")["attention-map"]
    for path in again:
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), path.name

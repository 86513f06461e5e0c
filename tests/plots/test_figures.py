"""Each figure builds from a small synthetic table, including missing and failed cells."""

import itertools

import numpy as np
import pandas as pd

from plots.__main__ import main as plots_main
from plots.figures import build_all, plot_heatmaps, plot_passkey, plot_speed


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
    import matplotlib.pyplot as plt

    captured = {}
    real_save = plt.Figure.savefig

    def grab(fig, *args, **kwargs):
        captured.setdefault("fig", fig)
        return real_save(fig, *args, **kwargs)

    plt.Figure.savefig = grab
    try:
        plot_passkey(table(tasks=("passkey",)), tmp_path)
    finally:
        plt.Figure.savefig = real_save
    tiny = [ax for ax in captured["fig"].axes if "tiny-random" in ax.get_title()][0]
    smol = [ax for ax in captured["fig"].axes if "smollm2" in ax.get_title()][0]
    assert "ReRoPE (no data)" in tiny.get_legend_handles_labels()[1]
    assert any(t.get_text() == "OOM" for t in smol.texts)
    assert any("training length (8192)" in label for label in smol.get_legend_handles_labels()[1])


def test_speed_and_heatmap_handle_failures(tmp_path):
    frame = table(tasks=("speed",), models=("smollm2-135m",))
    assert plot_speed(frame, tmp_path)
    assert plot_heatmaps(frame, tmp_path)


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

"""Paired comparisons: the exact tests and intervals against independent computations, the pairing
by input, the command line and the rings in the figures."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from harness import stats
from harness.analysis import series_by_settings
from harness.compare import main as compare_main
from harness.compare import paired_rows


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    for b, c in [(0, 5), (3, 9), (7, 7), (12, 0)]:
        n = b + c
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
        assert stats.mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * tail))
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_sign_flip_test_is_exact():
    assert stats.sign_flip_test([0.3] * 5) == pytest.approx(2 / 32)  # only all-plus and all-minus reach it
    assert stats.sign_flip_test([1.0, -1.0]) == 1.0
    d = np.array([0.5, -0.1, 0.3, 0.2, 0.4, -0.2])
    flips = [abs(np.dot(s, d)) / len(d) >= abs(d.mean()) - 1e-12 for s in itertools.product((1, -1), repeat=len(d))]
    assert stats.sign_flip_test(d) == pytest.approx(np.mean(flips))


def test_paired_proportion_interval():
    """Newcombe's interval contains the estimate, stays in [-1, 1], and at large n agrees with the
    Wald interval of the paired difference, (b - c)/n +- z sqrt(b + c - (b - c)^2/n)/n."""
    for a, b, c, d in [(5, 0, 0, 5), (0, 4, 0, 0), (3, 2, 1, 6), (0, 0, 0, 10)]:
        low, high = stats.paired_proportion_ci(a, b, c, d)
        n = a + b + c + d
        assert -1 <= low <= (b - c) / n <= high <= 1
    a, b, c, d = 4000, 1200, 1000, 3800
    n = a + b + c + d
    half = stats.Z95 * math.sqrt(b + c - (b - c) ** 2 / n) / n
    low, high = stats.paired_proportion_ci(a, b, c, d)
    assert low == pytest.approx((b - c) / n - half, abs=1e-3) and high == pytest.approx((b - c) / n + half, abs=1e-3)


def rows(task, scores: dict[str, list[float]], length=4096, hashes=None, **extra):
    out = []
    for method, values in scores.items():
        for sample, score in enumerate(values):
            out.append(dict(model="m", method=method, task=task, length=length, sample=sample, status="ok",
                            score=score, input_hash=(hashes or {}).get((method, sample), f"h{sample}"),
                            attn_implementation="sdpa", timestamp=f"2026-11-28T00:00:{sample:02d}", **extra))
    return pd.DataFrame(out)


def test_pairs_are_matched_input_by_input_and_tested_by_the_tasks_kind():
    frame = pd.concat([
        rows("passkey", {"origin": [0] * 12, "mesa": [1] * 12, "rerope": [0] * 6 + [1] * 6}),
        rows("ppl", {"origin": [3.5, 3.6, 3.4], "mesa": [3.3, 3.4, 3.3]}),
        rows("speed", {"origin": [1.0], "mesa": [0.5]}),  # timings: not compared
    ])
    out = paired_rows(frame)
    assert set(out["task"]) == {"passkey", "ppl"}
    mesa = out[(out.task == "passkey") & (out["first"] == "mesa") & (out["second"] == "origin")].iloc[0]
    assert (mesa.pairs, mesa.difference, mesa.test, mesa.better) == (12, 1.0, "mcnemar-exact", "first")
    assert mesa.p_value == pytest.approx(2 / 2**12)
    nll = out[out.task == "ppl"].iloc[0]
    assert (nll["first"], nll["second"], nll.test, nll.better) == ("mesa", "origin", "sign-flip-exact", "first")
    assert nll.difference == pytest.approx(-0.1667, abs=1e-4)  # lower NLL is better
    assert nll.p_value == pytest.approx(2 / 8)
    # Origin is always second; the rows follow the methods' order.
    assert list(out[out.task == "passkey"]["first"]) == ["rerope", "mesa", "mesa"]


def test_different_inputs_and_eager_rows_are_never_paired():
    frame = rows("passkey", {"origin": [0, 0, 0], "mesa": [1, 1, 1]}, hashes={("mesa", 2): "other"})
    out = paired_rows(frame)
    assert out.iloc[0].pairs == 2  # sample 2 saw another input
    eager = rows("passkey", {"origin": [1, 1, 1]}).assign(attn_implementation="eager")
    out = paired_rows(series_by_settings(pd.concat([frame, eager])))
    assert ({("origin (eager)", "origin"), ("mesa", "origin (eager)"), ("mesa", "origin")}
            == set(zip(out["first"], out["second"])))


def test_command_line_writes_every_pair_and_errors_in_one_line(tmp_path, capsys):
    frame = rows("passkey", {"origin": [0] * 12, "mesa": [1] * 12})
    frame.to_csv(tmp_path / "all.csv", index=False)
    assert compare_main(["--results", str(tmp_path / "all.csv")]) == 0
    printed = capsys.readouterr().out
    assert "mesa" in printed and "smallest possible p is 0.000488" in printed
    written = pd.read_csv(tmp_path / "compare.csv")
    assert len(written) == 1 and written.iloc[0].better == "first"
    assert compare_main(["--results", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert compare_main(["--results", str(tmp_path / "all.csv"), "--alpha", "2"]) == 2


@pytest.mark.parametrize("content,message", [
    ("", "is empty: no rows"),
    ("a,b\n1,2\n", "is not a results table (no model, method, task, length, sample, status column)"),
    ("\xff\xfe\x00", "is not a results table"),
], ids=["empty", "foreign", "binary"])
def test_a_file_that_is_no_results_table_is_one_line(tmp_path, capsys, content, message):
    """An empty CSV used to be a pandas traceback."""
    path = tmp_path / "given.csv"
    path.write_bytes(content.encode("latin-1"))
    assert compare_main(["--results", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} {message}") and len(err.splitlines()) == 1


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit:
        compare_main(["--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m harness.compare ")


def test_figures_ring_what_is_significantly_better_than_origin(tmp_path):
    from matplotlib.collections import PathCollection

    from plots.figures import better_than_baseline, plot_task
    from tests.plots.test_figures import _figure_of

    def ring_count(frame):
        fig = _figure_of(lambda f, out: plot_task(f, "passkey", out), frame, tmp_path)
        return sum(len(c.get_offsets()) for c in fig.axes[0].collections  # rings: hollow, larger markers
                   if isinstance(c, PathCollection) and c.get_facecolors().size == 0)

    strong = rows("passkey", {"origin": [0] * 12, "mesa": [1] * 12})
    weak = rows("passkey", {"origin": [0] * 3, "mesa": [1] * 3})  # 3 pairs: p >= 0.25 at best
    assert better_than_baseline(strong) == {("m", "mesa", 4096)}
    assert better_than_baseline(weak) == set()
    assert ring_count(strong) == 1 and ring_count(weak) == 0



def test_a_labelled_series_is_paired_with_its_plain_method_not_merged_into_it():
    from harness.analysis import split_series

    plain = rows("passkey", {"origin": [0] * 6, "mesa": [0, 0, 0, 1, 1, 1]})
    scaled = rows("passkey", {"mesa": [1] * 6}).assign(label="scaled-x4")
    eager = rows("passkey", {"mesa": [0] * 6}).assign(attn_implementation="eager", label="scaled-x4")
    series = series_by_settings(pd.concat([plain, scaled, eager], ignore_index=True))
    assert set(series["method"]) == {"origin", "mesa", "mesa (scaled-x4)", "mesa (eager, scaled-x4)"}
    assert split_series("mesa (eager, scaled-x4)") == ("mesa", "eager, scaled-x4")
    out = paired_rows(series).set_index(["first", "second"])
    assert out.loc[("mesa (scaled-x4)", "mesa"), "pairs"] == 6
    assert out.loc[("mesa (scaled-x4)", "mesa"), "difference"] == pytest.approx(0.5)
    assert out.loc[("mesa", "origin"), "difference"] == pytest.approx(0.5)  # the plain rows alone, not averaged

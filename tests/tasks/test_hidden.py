"""The hidden-state task: its input, its rows on the tiny model, the crossing rule, and the figure."""

import numpy as np
import pandas as pd
import pytest

from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from harness.methods import apply_method
from tasks.hidden import HiddenStateTask, first_crossing
from tests.conftest import TRAIN_LENGTH, tiny_model


def task(**params):
    return HiddenStateTask([400], tokenizer=ByteTokenizer(), train_length=TRAIN_LENGTH, **params)


def test_the_input_is_the_word_repeated_to_the_length():
    ids = task(text="hello").input_ids(400)
    assert len(ids) == 400 and ByteTokenizer().decode(ids[:12]) == " hello hello"
    positions = task(positions=5).sampled_positions(400)
    assert positions == sorted({0, 100, 200, 299, 399, TRAIN_LENGTH - 1})  # evenly spaced, plus T - 1


def test_rows_per_layer_dimension_and_position_on_the_tiny_model():
    rows = pd.DataFrame(task(layers=[0, -1], top_dims=2, positions=8).evaluate_length(tiny_model(), 400))
    assert len(rows) == 2 * 2 * 9 and rows["sample"].tolist() == list(range(len(rows)))  # 8 positions + T - 1
    assert set(rows["layer"]) == {0, 1} and rows["input_hash"].nunique() == 1
    at_t = rows[rows["position"] == TRAIN_LENGTH - 1]
    assert np.allclose(at_t["score"], at_t["threshold"])  # the threshold is the value at T - 1
    # the chosen dimensions are the largest |value| at T - 1 of the whole hidden state
    fixed = pd.DataFrame(task(layers=[-1], dims=[3, 5], positions=8).evaluate_length(tiny_model(), 400))
    assert set(fixed["dim"]) == {3, 5}


def test_where_a_method_equals_origin_it_gives_the_same_curve():
    origin = pd.DataFrame(task(positions=8).evaluate_length(tiny_model(), 400))
    # StreamingLLM's cache (4 sinks + 124 recent tokens) holds every token up to T: there it is Origin.
    streaming = apply_method(tiny_model(), "streaming-llm")
    other = pd.DataFrame(task(positions=8).evaluate_length(streaming, 400))
    inside = origin["position"] < TRAIN_LENGTH
    assert np.allclose(origin[inside]["score"], other[inside]["score"], atol=1e-4)
    assert not np.allclose(origin[~inside]["score"], other[~inside]["score"], atol=1e-2)  # guard


def test_first_crossing():
    positions = np.array([0, 50, 99, 150, 200, 250])
    rising = [0.0, 0.5, 1.0, 0.9, 1.2, 2.0]  # threshold 1.0 at T - 1 = 99
    assert first_crossing(positions, rising, 1.0, 100) == 200
    falling = [2.0, 1.5, 1.0, 1.1, 0.5, 0.0]
    assert first_crossing(positions, falling, 1.0, 100) == 200
    assert first_crossing(positions, [0, 0.5, 1.0, 0.9, 0.8, 0.7], 1.0, 100) is None


def test_bad_settings_are_one_line():
    with pytest.raises(HarnessError, match="^task.text must be"):
        task(text=" ")
    with pytest.raises(HarnessError, match="^task.hidden needs layers"):
        task(layers=[], top_dims=2)


def test_figure_and_prediction_table(tmp_path):
    from plots.figures import build_all

    hidden = pd.DataFrame(task(positions=8).evaluate_length(tiny_model(), 400))
    hidden = hidden.assign(model="tiny-random", method="origin", task="hidden", length=400, status="ok")
    passkey = pd.DataFrame(dict(model="tiny-random", method="origin", task="passkey", length=[256, 512],
                                sample=0, status="ok", score=[1.0, 0.0], metric="accuracy"))
    built = build_all(pd.concat([hidden, passkey], ignore_index=True), tmp_path)
    assert (tmp_path / "hidden_states.png").exists()
    table = pd.read_csv(tmp_path / "hidden_prediction.csv")
    assert len(table) == 2 and (table["observed_failure"] == 512).all()
    assert any(p.name == "hidden_prediction.csv" for p in built["hidden"])

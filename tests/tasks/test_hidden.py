"""The hidden-state task: its input, its rows on the tiny model, the crossing rule, and the figure."""

import numpy as np
import pandas as pd
import pytest
import torch

from harness.analysis import first_crossing
from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from harness.methods import apply_method
from tasks.hidden import HiddenStateTask, position_tracking_dims
from tests.conftest import TRAIN_LENGTH, tiny_model


def task(**params):
    return HiddenStateTask([400], tokenizer=ByteTokenizer(), train_length=TRAIN_LENGTH, **params)


class WordTokenizer:
    """One id per word, with an optional BOS that it never adds itself (as SmolLM2's tokenizer)."""

    def __init__(self, bos_token_id=None):
        self.bos_token_id = bos_token_id

    def encode(self, text, add_special_tokens=True):
        return [7 for _ in text.split()]


def test_the_input_is_the_word_repeated_to_the_length():
    ids = task(text="hello").input_ids(400)
    assert len(ids) == 400 and ByteTokenizer().decode(ids[:12]) == "hello hello "
    # a one-token word: the tokenizer's BOS first, even when it does not add it, as LLaMA's <s>
    with_bos = HiddenStateTask([8], tokenizer=WordTokenizer(bos_token_id=1), train_length=4)
    assert with_bos.input_ids(8) == [1] + [7] * 7
    # without any distinct first token every position would hold the same state: refused
    without = HiddenStateTask([8], tokenizer=WordTokenizer(), train_length=4)
    with pytest.raises(HarnessError, match="^task.text 'hello' gives one token repeated"):
        without.input_ids(8)
    positions = task(positions=5).sampled_positions(400)
    assert positions == sorted({0, 100, 200, 299, 399, TRAIN_LENGTH - 1})  # evenly spaced, plus T - 1


def test_rows_per_layer_dimension_and_position_on_the_tiny_model():
    rows = pd.DataFrame(task(layers=[0, -1], top_dims=2, positions=8).evaluate_length(tiny_model(), 400))
    assert len(rows) == 2 * 2 * 9 and rows["sample"].tolist() == list(range(len(rows)))  # 8 positions + T - 1
    assert set(rows["layer"]) == {0, 1} and rows["input_hash"].nunique() == 1
    at_t = rows[rows["position"] == TRAIN_LENGTH - 1]
    assert np.allclose(at_t["score"], at_t["threshold"])  # the threshold is the value at T - 1
    fixed = pd.DataFrame(task(layers=[-1], dims=[3, 5], positions=8).evaluate_length(tiny_model(), 400))
    assert set(fixed["dim"]) == {3, 5}
    per_layer = pd.DataFrame(task(dims={0: [1], -1: [2, 4]}, positions=8).evaluate_length(tiny_model(), 400))
    assert sorted(set(zip(per_layer["layer"], per_layer["dim"]))) == [(0, 1), (1, 2), (1, 4)]


def test_default_dimensions_are_those_that_follow_position_inside_t():
    positions = list(range(0, 200, 10))  # T = 100: ten positions inside
    values = torch.randn(len(positions), 6, generator=torch.Generator().manual_seed(0))
    inside = torch.tensor([p < 100 for p in positions])
    values[inside, 4] = -torch.arange(10.0) * 3  # falls with position: |rho| = 1
    values[inside, 1] = torch.arange(10.0) ** 2  # rises: rho = 1
    values[~inside, 0] = torch.arange(10.0) * 100  # tracks position only past T: not chosen
    values[:, 5] = 1e4 + values[:, 5]  # the largest |values|, not following position: not chosen
    assert position_tracking_dims(values, positions, 100, 2) == [1, 4]


def test_where_a_method_equals_origin_it_gives_the_same_curve():
    origin = pd.DataFrame(task(positions=8).evaluate_length(tiny_model(), 400))
    # StreamingLLM's cache (4 sinks + 124 recent tokens) holds every token up to T: there it is Origin.
    streaming = apply_method(tiny_model(), "streaming-llm")
    other = pd.DataFrame(task(positions=8).evaluate_length(streaming, 400))
    inside = origin["position"] < TRAIN_LENGTH
    assert np.allclose(origin[inside]["score"], other[inside]["score"], atol=1e-4)
    assert not np.allclose(origin[~inside]["score"], other[~inside]["score"], atol=1e-2)  # guard


def test_first_crossing():
    positions = np.arange(0, 160, 10)  # T = 100: positions 0..90 inside, 99 is T - 1
    positions = np.r_[positions[:10], 99, positions[10:]]
    inside = np.linspace(0.0, 0.9, 10)  # rises by 0.1 a step towards the threshold 1.0 at T - 1
    rising = np.r_[inside, 1.0, 1.1, 1.2, 1.5, 1.6, 1.7, 1.8]
    assert first_crossing(positions, rising, 1.0, 100) == 120  # the first beyond 1.0 + 3 x 0.1
    assert first_crossing(positions, 2.0 - rising, 1.0, 100) == 120  # falling onto it: crosses below
    assert first_crossing(positions, np.r_[inside, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 1.0, 100) is None
    # noise around a plateau at the threshold is not a crossing
    plateau = np.r_[inside, 1.0, 1.0 + 0.02 * np.cos(np.arange(6) * 2.0)]
    assert first_crossing(positions, plateau, 1.0, 100) is None
    plateau[14] = 1.31
    assert first_crossing(positions, plateau, 1.0, 100) == 130


def test_bad_settings_are_one_line():
    with pytest.raises(HarnessError, match="^task.text must be"):
        task(text=" ")
    with pytest.raises(HarnessError, match="^task.hidden needs layers"):
        task(layers=[], top_dims=2)


@pytest.mark.parametrize("layers", [[99], [2], [0, -3]])
def test_a_layer_the_model_does_not_have_is_refused_not_wrapped_around(layers):
    """The tiny model has 2 layers: 99 used to record layer 99 % 2 = 1 as if it were asked for."""
    model = tiny_model()
    with pytest.raises(HarnessError, match=r"^task.layers \[.*\] out of range: the model has 2 decoder layers"):
        task(layers=layers).check_model(model)
    with pytest.raises(HarnessError, match="out of range"):
        task(layers=layers).evaluate_length(model, 400)
    task(layers=[0, 1, -1, -2]).check_model(model)


def test_a_job_asking_for_a_layer_the_model_lacks_writes_nothing(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.runner import run_job
    from tests.test_runner import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-random", "task=hidden", "task.lengths=[200]", "task.layers=[99]",
                                           f"results_dir={tmp_path}"])
    with pytest.raises(HarnessError, match="task.layers \\[99\\] out of range"):
        run_job(cfg)
    assert not list(tmp_path.glob("runs/**/*.csv"))


def test_figure_and_prediction_table(tmp_path):
    from plots.figures import build_all

    hidden = pd.DataFrame(task(positions=8).evaluate_length(tiny_model(), 400))
    hidden = hidden.assign(model="tiny-random", method="origin", task="hidden", length=400, status="ok")
    passkey = pd.DataFrame(dict(model="tiny-random", method="origin", task="passkey", length=[256, 512],
                                sample=0, status="ok", score=[1.0, 0.0], metric="accuracy"))
    # a method whose own value at T - 1 differs (as Dynamic-NTK's): its rows are measured against Origin's
    moved = hidden.assign(method="dynamic-ntk", threshold=hidden["threshold"] + 100.0)
    built = build_all(pd.concat([hidden, moved, passkey], ignore_index=True), tmp_path)
    assert (tmp_path / "hidden_states.png").exists()
    table = pd.read_csv(tmp_path / "hidden_prediction.csv")
    assert len(table) == 4 and (table[table["method"] == "origin"]["observed_failure"] == 512).all()
    assert table.groupby("dim")["threshold"].nunique().eq(1).all()  # one threshold per panel: Origin's
    assert np.allclose(table.sort_values(["dim", "method"])["threshold"],
                       hidden[hidden["position"] == TRAIN_LENGTH - 1].sort_values("dim")["threshold"].repeat(2))
    assert any(p.name == "hidden_prediction.csv" for p in built["hidden"])

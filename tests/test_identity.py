"""Committed rows keep their identity (harness.identity): each results file's name and its rows'
``config_hash`` are the hash of the config saved beside it, and rows' ``input_hash`` is the hash
of the input the task builds today. A change to either hash, or to what goes into it, would
orphan every committed file (a rerun would recompute hours) or unpair methods in compare."""

from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.identity import input_hash
from harness.job import results_path
from harness.models import cache_root
from harness.plan import model_shape

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "results").glob("*/runs/*/*/*.csv"))
EXPERIMENTS = ("cpu-smollm2", "gpu-h200")  # the committed reproductions: both must have rows here


def committed_rows(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype={"input_hash": str, "config_hash": str}, low_memory=False)


def build_task(cfg, tokenizer=None):
    """The job's task as the runner builds it (harness.runner.run_job), for its inputs only."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    shape, _ = model_shape(OmegaConf.to_container(cfg.model, resolve=True))
    return instantiate(params, tokenizer=tokenizer, prompt_template=cfg.model.get("prompt_template") or "raw",
                       seed=cfg.seed, train_length=cfg.model.train_length, vocab_size=shape.vocab if shape else None,
                       _convert_="all")


def test_both_committed_reproductions_are_checked():
    assert {csv.relative_to(ROOT / "results").parts[0] for csv in COMMITTED} >= set(EXPERIMENTS)


@pytest.mark.parametrize("csv", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_a_committed_file_is_named_by_the_hash_of_its_config(csv):
    cfg = OmegaConf.load(csv.with_suffix(".yaml"))
    path, digest = results_path(cfg)
    # runs/<task>/<model>/<method>-<hash>.csv
    assert path.relative_to(path.parents[3]) == csv.relative_to(csv.parents[3])
    assert set(committed_rows(csv)["config_hash"]) == {digest}


def test_committed_speed_rows_keep_their_input_hashes():
    """Speed inputs are seeded random ids: every committed speed row is rebuilt (the model's vocabulary
    from its architecture, or the embedded model's converted config when this machine has it)."""
    checked = 0
    for csv in [c for c in COMMITTED if c.parts[-3] == "speed"]:
        cfg = OmegaConf.load(csv.with_suffix(".yaml"))
        if model_shape(OmegaConf.to_container(cfg.model, resolve=True))[0] is None:
            continue  # the embedded model before its first load: no vocabulary known
        task = build_task(cfg)
        for row in committed_rows(csv).itertuples():
            assert input_hash(task.build_input(row.length, row.sample).input_ids) == row.input_hash, (
                csv.name, row.length)
            checked += 1
    assert checked >= 45  # at least the GPU sweep's rows, whose architecture is in their config


SMOLLM2 = cache_root() / "smollm2-135m"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="the embedded model is not converted here yet")
@pytest.mark.parametrize("task", ["passkey", "hidden"])
def test_committed_text_rows_keep_their_input_hashes(task):
    """Passkey and hidden-state inputs need SmolLM2's tokenizer (from the converted cache): the
    first row of each committed file, and of each length for the hidden task's one input per length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    files = [c for c in COMMITTED if c.parts[-3] == task]
    assert files
    for csv in files:
        task_obj = build_task(OmegaConf.load(csv.with_suffix(".yaml")), tokenizer)
        rows = committed_rows(csv)
        if task == "hidden":  # one forward per length: every row of a length has its input's hash
            for length, cell in rows.groupby("length"):
                assert set(cell["input_hash"]) == {input_hash(task_obj.input_ids(int(length)))}, (csv.name, length)
        else:
            row = rows.iloc[0]
            built = task_obj.build_input(int(row["length"]), int(row["sample"]))
            assert input_hash(built.input_ids) == row["input_hash"], csv.name

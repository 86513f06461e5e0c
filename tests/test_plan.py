"""Plan mode: cells, done counts and token totals without loading weights; memory estimates from the shape."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from harness.methods.method import build_method
from harness.plan import estimate_memory, plan_job, shape_of
from harness.runner import run_job
from tests.test_runner import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tied,kv_heads", [(False, 2), (True, 4)])
def test_parameter_count_matches_transformers(tied, kv_heads):
    arch = dict(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=kv_heads, head_dim=16, intermediate_size=96, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **arch))
    assert shape_of(arch).parameters == sum(p.numel() for p in model.parameters())


def test_llama2_7b_shape_from_its_model_config():
    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/llama2-7b.yaml").architecture)
    assert shape_of(arch).parameters == 6_738_415_616  # the published count


def test_memory_estimate_parts():
    shape = shape_of(dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          intermediate_size=11008, tie_word_embeddings=False))
    origin = build_method("origin", 4096)
    one = estimate_memory(shape, origin, 4096, 0, 1, "float16")
    two = estimate_memory(shape, origin, 8192, 0, 1, "float16")
    assert one["weights"] == pytest.approx(6_738_415_616 * 2 / 2**30)
    assert one["kv_cache"] == pytest.approx(2 * 32 * 32 * 128 * 4096 * 2 / 2**30)  # 2 GiB at 4k
    assert two["kv_cache"] == pytest.approx(2 * one["kv_cache"])
    assert one["total"] == pytest.approx(one["weights"] + one["kv_cache"] + one["work"])
    fp32 = estimate_memory(shape, origin, 4096, 0, 1, "float32")
    assert fp32["weights"] == pytest.approx(2 * one["weights"])
    # the weave methods keep rotated key copies while decoding; Origin does not
    decoding = {m: estimate_memory(shape, build_method(m, 4096), 16384, 8, 1, "float16")["work"] for m in
                ("origin", "mesa", "rerope", "leaky-rerope")}
    assert decoding["origin"] < decoding["mesa"] == decoding["rerope"] < decoding["leaky-rerope"]
    assert decoding["leaky-rerope"] == pytest.approx(2 * decoding["mesa"])  # two rotated copies of K vs one


def test_plan_counts_done_samples_and_loads_nothing(tmp_path, monkeypatch):
    run_job(config(tmp_path, "method=mesa", "task.lengths=[300]", "task.samples=1"))

    def no_model(*args, **kwargs):
        raise AssertionError("plan mode must not load the model")

    monkeypatch.setattr("harness.models.load_model", no_model)
    plan = plan_job(config(tmp_path, "method=mesa", "task.lengths=[300,400]", "task.samples=3"))
    assert [(c.length, c.done, c.to_run) for c in plan.cells] == [(300, 1, 2), (400, 0, 3)]
    assert plan.tokens_to_run == 2 * (300 + 2) + 3 * (400 + 2)  # input + max_new_tokens per sample
    assert plan.shape_source == "model.architecture" and plan.cells[0].memory["total"] > 0


def test_plan_on_the_command_line_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness", "-m", "model=tiny-random", "method=origin,mesa",
                           "plan=true", "task.lengths=[300,400]", "task.samples=2", f"results_dir={tmp_path}",
                           f"hydra.sweep.dir={tmp_path}/multirun"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # 2 jobs x 2 samples x (300 + 400 + 2 x 8 new tokens)
    assert "plan: 2 jobs, 8 samples to run (0 already done), 2,864 tokens; nothing was run" in done.stdout
    assert "est. peak GiB" in done.stdout
    assert not list(tmp_path.iterdir())  # no rows, and no sweep folder: a plan writes nothing


def test_plan_counts_longeval_lines_as_tokens(tmp_path):
    """LongEval's length counts lines: 200 lines are ~4.8k LLaMA tokens (LongChat's figure), not 200
    tokens, and the KV cache of LLaMA2-7B for them is GiBs, not 0.29 GiB."""
    from hydra import compose, initialize_config_dir

    from harness.plan import format_plan

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=llama2-7b", "task=longeval", "task.lengths=[200]", "task.samples=1",
                                           f"results_dir={tmp_path}"])
    plan = plan_job(cfg)
    cell = plan.cells[0]
    assert (cell.length, cell.prompt_tokens, cell.new_tokens) == (200, 24 * 200, 100)
    assert plan.tokens_to_run == 4800 + 100
    # fp32 K and V of 32 layers x 4096 channels for every token
    assert cell.memory["kv_cache"] == pytest.approx(2 * 32 * 4096 * 4 * 4900 / 2**30)  # 4.79 GiB
    assert "length counts lines, not tokens" in format_plan(plan)


def readme_example(command: str) -> list[str]:
    """The output lines the README shows under ``command`` (its ``# `` comment lines, ``...`` left out)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(command) + 1
    shown = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if text != "...":
            shown.append(text)
    return shown


def test_the_readme_plan_example_runs_without_cuda_and_prints_what_the_readme_shows(tmp_path):
    """The README's planning example, on a machine without CUDA (as a cluster's login node): every
    line the README shows is printed (timestamps and the home directory aside), exit 0, nothing written."""
    command = "python -m harness -m +experiment=paper-gpu plan=true"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "invalid" not in done.stdout and "error" not in done.stderr
    printed = {" ".join(re.sub(r"^\[[^]]*\]\[HYDRA\]", "[...][HYDRA]", line).split())
               for line in (done.stdout + done.stderr).splitlines()}
    shown = readme_example(command)
    assert len(shown) >= 6 and shown[-1].startswith("plan: 27 jobs")
    for line in shown:
        line = line.replace("/home/me/mesa-harness/results", str(tmp_path / "results"))
        assert " ".join(line.split()) in printed, line
    assert not list(tmp_path.iterdir())

"""The architecture table: every entry has a tiny test model, a right parameter count, clear
refusals; LongRoPE's frequencies follow the true total length; no other file names a model type."""

import re
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from harness.architectures import ARCHITECTURES, architecture_of, rope_kind
from harness.errors import UnsupportedModelError
from harness.methods import METHODS, apply_method
from harness.methods.base import WeaveMethod
from harness.plan import shape_of
from tests.conftest import TINY_ARCHITECTURES, TINY_PARAMS, method_arch_pairs, random_ids, supports, tiny_model
from tests.methods.test_attention import LargestTensor

ROOT = Path(__file__).resolve().parents[1]


def test_every_table_entry_has_a_tiny_test_model():
    tested = {spec["model_type"] for spec in TINY_ARCHITECTURES.values()}
    assert set(ARCHITECTURES) <= tested, f"add a tiny config to tests/conftest.py for {set(ARCHITECTURES) - tested}"


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_plan_parameter_count_matches_the_built_model(arch):
    model = tiny_model(arch)
    assert shape_of(model.config.to_dict()).parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_the_table_finds_every_layers_attention_module(arch):
    model = tiny_model(arch)
    modules = architecture_of(model).attention_modules(model)
    assert len(modules) == model.config.num_hidden_layers and all(isinstance(m, torch.nn.Module) for m in modules)


UNSUPPORTED = [(m, a) for a in TINY_ARCHITECTURES for m in METHODS if not supports(m, a)]


@pytest.mark.parametrize("method,arch", UNSUPPORTED)
def test_an_unsupported_pair_is_one_line_and_leaves_the_model_untouched(method, arch):
    model = tiny_model(arch)
    ids = random_ids(20)
    with torch.no_grad():
        before = model(ids).logits
    with pytest.raises(UnsupportedModelError) as error:
        apply_method(model, method)
    assert "\n" not in str(error.value) and method in str(error.value) and rope_kind(model) in str(error.value)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)


def test_an_architecture_outside_the_table_runs_origin_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    apply_method(gpt2, "origin")  # the stock model
    with pytest.raises(UnsupportedModelError, match="not in the architecture table"):
        apply_method(gpt2, "rerope")


def test_no_python_file_outside_the_table_names_a_model_type():
    names = "|".join(re.escape(t) for t in ARCHITECTURES)
    quoted = re.compile(rf"""["']({names})["']""")
    offenders = []
    for folder in ("harness", "tasks", "plots", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "architectures.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in quoted.finditer(path.read_text())]
    assert not offenders


@pytest.mark.parametrize("method,arch", [(m, a) for m, a in method_arch_pairs() if a in ("gpt_neox", "phi3-longrope")
                                         and issubclass(METHODS[m], WeaveMethod)])
def test_a_whole_model_prefill_builds_no_length_squared_tensor(method, arch):
    """The fused kernels' promise holds through a whole partial-rotary / LongRoPE model: at 2k
    tokens no op returns a tensor as large as one head's L x L scores."""
    length = 2048
    model = apply_method(tiny_model(arch), method, **dict(TINY_PARAMS[method], block_bytes=2**20))
    ids = random_ids(length)
    with torch.no_grad(), LargestTensor() as spy:
        model(ids, use_cache=False, logits_to_keep=1)
    assert spy.largest < length * length / 4, spy.largest


# -- LongRoPE (Phi-3-128k): short factors up to original_max_position_embeddings (64 here), long beyond
LONGROPE = "phi3-longrope"
SWITCH = 64
LONGROPE_METHODS = [m for m in METHODS if supports(m, LONGROPE) and m != "origin"]


@pytest.mark.parametrize("method", LONGROPE_METHODS)
@pytest.mark.parametrize("length", [SWITCH - 4, SWITCH + 36])
def test_inside_the_window_a_method_equals_stock_longrope_in_both_regimes(method, length):
    """With windows and caches larger than the input, every method is the stock model: short
    factors up to the switch, long factors (and the same attention factor) beyond it."""
    params = {k: (4 * length if k in ("window", "n_local", "last_chunk") else v)
              for k, v in TINY_PARAMS[method].items()}
    ids = random_ids(length)
    with torch.no_grad():
        expected = tiny_model(LONGROPE)(ids).logits
        got = apply_method(tiny_model(LONGROPE), method, **params)(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def decode_vs_prefixes(model, ids, prompt):
    """Last-position logits of each cached decoding step after a prefill of ``prompt`` tokens, and
    of a separate forward over each prefix (LongRoPE's frequencies depend on the whole length, so
    one forward over the longest prefix would not do): (steps, recomputed), both (n, vocab)."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt], cache=DynamicCache(), use_cache=True)
        steps = [out.logits[0, -1]]
        for i in range(prompt, ids.shape[1]):
            out = model(input_ids=ids[:, i : i + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits[0, -1])
        recomputed = [model(input_ids=ids[:, :n]).logits[0, -1] for n in range(prompt, ids.shape[1] + 1)]
    return torch.stack(steps), torch.stack(recomputed)


@pytest.mark.parametrize("method", ["origin"] + LONGROPE_METHODS)
def test_generation_across_the_switch_equals_recomputation(method):
    """A cache cannot carry a sequence across the switch: the hidden states of earlier tokens, and so
    the keys of every layer after the first, were computed with the short factors. generate() drops
    the cache at the switch (Phi-3's prepare_inputs_for_generation); the method's state follows it
    (a fresh cache is a new sequence, the long factors chosen by the total length), so each
    generated token's logits are those of recomputing the whole sequence."""
    model = apply_method(tiny_model(LONGROPE), method, **TINY_PARAMS[method])
    prompt = random_ids(SWITCH - 4)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, min_new_tokens=10,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
        generated = torch.stack(out.logits)[:, 0]  # (10, vocab)
        recomputed = torch.stack([model(input_ids=out.sequences[:, :n]).logits[0, -1]
                                  for n in range(prompt.shape[1], out.sequences.shape[1])])
    torch.testing.assert_close(generated, recomputed, atol=1e-4, rtol=1e-4)


def test_stock_longrope_cached_decoding_across_the_switch_does_not():
    """Guard for the test above: a cached loop that does not drop its cache at the switch keeps
    hidden states computed with the short factors, so it is not the recomputation after it."""
    steps, recomputed = decode_vs_prefixes(tiny_model(LONGROPE), random_ids(SWITCH + 8), SWITCH - 4)
    before, after = slice(0, 5), slice(5, None)  # sequences of 60..64 tokens, then 65..72
    torch.testing.assert_close(steps[before], recomputed[before], atol=1e-4, rtol=1e-4)
    assert (steps[after] - recomputed[after]).abs().max() > 1e-2


def test_the_docs_architecture_table_names_every_entry():
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text[text.index("## Architectures"):text.index("## Methods and tasks describe themselves")]
    assert all(f"`{model_type}`" in section for model_type in ARCHITECTURES)


# -- the paper's other families through the command line: plan mode, and a run at a reduced shape
SMALL_SHAPES = {
    "pythia-6.9b": ["model.architecture.num_hidden_layers=1", "model.architecture.hidden_size=256",
                    "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=512"],
    "phi3-mini-128k": ["model.architecture.num_hidden_layers=1", "model.architecture.hidden_size=192",
                       "model.architecture.num_attention_heads=2", "model.architecture.num_key_value_heads=2",
                       "model.architecture.intermediate_size=512"],  # head_dim stays 96: 48 LongRoPE factors
    "mpt-7b": ["model.architecture.n_layers=1", "model.architecture.d_model=256", "model.architecture.n_heads=4"],
}


def _harness(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE"})


@pytest.mark.parametrize("model", list(SMALL_SHAPES))
def test_each_family_plans_at_full_size_and_runs_mesa_at_a_reduced_shape(model, tmp_path):
    common = [f"model={model}", "model.random_weights=true", "method=mesa", "task=speed", "task.lengths=[4096]",
              f"results_dir={tmp_path}"]
    plan = _harness(*common, "plan=true", cwd=ROOT)
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr
    assert "est. peak GiB" in plan.stdout and "?" not in plan.stdout.splitlines()[2]
    run = _harness(*common, "task.decode_steps=2", *SMALL_SHAPES[model], cwd=ROOT)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "1 ok" in run.stdout


@pytest.mark.parametrize("model,method", [("mpt-7b", "yarn"), ("phi3-mini-128k", "dynamic-ntk")])
def test_a_refused_pair_is_one_line_and_exit_2_in_plan_mode(model, method, tmp_path):
    result = _harness(f"model={model}", "model.random_weights=true", f"method={method}", "task=speed",
                      f"results_dir={tmp_path}", "plan=true", cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        next(line for line in result.stderr.splitlines() if line.startswith("error:"))]

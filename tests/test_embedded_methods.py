"""The five methods on the real embedded model (SmolLM2-135M-Instruct, trained at 8192). Slow."""

import pytest
import torch

from harness.methods import METHODS, apply_method, remove_method
from harness.models import load_model
from tasks import passkey

pytestmark = pytest.mark.slow
SMOLLM2 = dict(name="smollm2-135m", source="gguf_package", hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
               local_path=None, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", train_length=8192,
               prompt_template="raw", random_weights=False, seed=0, architecture=None)


@pytest.fixture(scope="module")
def smollm2():
    return load_model(SMOLLM2)


@pytest.fixture(scope="module")
def passkey_sample(smollm2):
    return passkey.make_sample(smollm2.tokenizer, smollm2.prompt_template, 400, seed=0, index=0)


def test_every_method_equals_origin_on_a_short_input(smollm2, passkey_sample):
    """400 tokens: inside ReRoPE's window (512) and far below Mesa's chunking threshold.

    In float64, with atol 1e-3: SmolLM2 has massive activations (~2.5e4 in layers 11-27) that
    amplify rounding differences between attention kernels (summation order) from ~1e-14 per layer
    to ~1e-4 on the logits (~1e-2 in fp32). A wrong position moves them by far more than 1e-3, as
    the guard at the end shows."""
    model = smollm2.model
    ids = torch.tensor([passkey_sample.input_ids])
    with torch.no_grad():
        remove_method(model)
        model.double()
        expected = model(ids).logits
        for method in METHODS:
            apply_method(model, method)
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-3, rtol=0, msg=method)
        apply_method(model, "rerope", window=64)  # guard: positions clipped inside the input
        assert (model(ids).logits - expected).abs().max() > 0.1
    remove_method(model)
    model.float()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_retrieves_a_passkey(smollm2, passkey_sample, method):
    model = apply_method(smollm2.model, method)
    ids = torch.tensor([passkey_sample.input_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=smollm2.tokenizer.eos_token_id)
    answer = smollm2.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    remove_method(model)
    assert passkey.score(answer, passkey_sample.key), answer


def test_cli_smoke_on_the_embedded_model(tmp_path):
    """The README's main command, shortened: rows are written and a rerun computes nothing."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "harness", "-m", "method=origin,mesa", "task.lengths=[512]", "task.samples=1",
            f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"]
    first = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "sweep: 2 jobs, 2 new ok rows, 0 failed samples" in first.stdout
    again = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
    assert "sweep: 2 jobs, 0 new ok rows" in again.stdout

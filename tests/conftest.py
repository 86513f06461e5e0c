"""Shared fixtures: tiny random LLaMA-family models whose attention is far from uniform.

With transformers' default init (std 0.02) attention is nearly uniform and position methods
give almost the same output, so equality tests would pass vacuously; std 0.2 makes attention
sharp enough that a wrong position changes the logits (tests/methods/test_guard.py checks it).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from harness.methods import METHODS

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN_LENGTH = 128  # the tiny-random model's (conf/model/tiny-random.yaml)

ARCHITECTURES = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", use_sliding_window=False),
    "phi3": dict(model_type="phi3", partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2),  # partial rotary
}


def tiny_model(arch: str = "llama", seed: int = 0, attn_implementation: str | None = None, **overrides) -> torch.nn.Module:
    """A 2-layer model with GQA (4 query heads, 2 kv heads), trained length 128, fp32, eval mode.
    ``attn_implementation``: transformers' default (sdpa) unless given (eager)."""
    kwargs = dict(ARCHITECTURES[arch])
    model_type = kwargs.pop("model_type")
    params = dict(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, max_position_embeddings=TRAIN_LENGTH, initializer_range=0.2,
        rope_theta=10000.0, tie_word_embeddings=False,
    )
    params.update(kwargs)
    params.update(overrides)
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(seed)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **extra)
    return model.eval()


def random_ids(length: int, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=generator)


def tiny_params(method: str) -> dict:
    """A method's settings for models trained at 128 tokens: conf/model_method/tiny-random_<method>.yaml
    (the tiny-random model's), or none. A new method states them there, not here."""
    path = CONF / "model_method" / f"tiny-random_{method}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


TINY_PARAMS = {method: tiny_params(method) for method in METHODS}


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request):
    return request.param

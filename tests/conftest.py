"""Shared fixtures: tiny random LLaMA-family models whose attention is far from uniform.

With transformers' default init (std 0.02) attention is nearly uniform and position methods
give almost the same output, so equality tests would pass vacuously; std 0.2 makes attention
sharp enough that a wrong position changes the logits (tests/methods/test_parity.py,
test_methods_differ_from_origin_beyond_training_length, checks it).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from harness.architectures import ARCHITECTURES as ARCHITECTURE_TABLE
from harness.architectures import rope_kind
from harness.methods import METHODS

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN_LENGTH = 128  # the tiny-random model's (conf/model/tiny-random.yaml)

# One tiny configuration per entry of harness.architectures.ARCHITECTURES (tests/test_architectures.py
# checks that none is missing), plus variants of an entry (Phi-3 with LongRoPE).
TINY_ARCHITECTURES = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", use_sliding_window=False),
    # partial rotary
    "phi3": dict(model_type="phi3", partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # Phi-3-128k's LongRoPE: short factors up to 64 tokens (original_max_position_embeddings), long
    # ones beyond; T = max_position_embeddings = 128. Factor lists: rotary_dim / 2 = 4 entries.
    "phi3-longrope": dict(model_type="phi3", partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                          original_max_position_embeddings=64,
                          rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                                               factor=2.0, short_factor=[1.0, 1.3, 1.9, 2.6],
                                               long_factor=[1.0, 2.2, 4.5, 9.0])),
    # Pythia: partial rotary (Pythia's own is 0.25 of 128 channels; half of 16 here, so positions
    # matter in the tiny model), no GQA, parallel residual.
    "gpt_neox": dict(model_type="gpt_neox", rotary_pct=0.5),
    # MPT: ALiBi, its own config keys (no LLaMA ones), eager attention only; 4 heads of 16 channels.
    # transformers' MPT ignores expansion_ratio (its MLP is 4 x d_model), hence 4 here.
    "mpt": dict(model_type="mpt", d_model=64, n_layers=2, n_heads=4, max_seq_len=TRAIN_LENGTH, expansion_ratio=4,
                vocab_size=256, initializer_range=0.2, tie_word_embeddings=False),
}
# The architectures whose positions are RoPE (the `arch` fixture); ALiBi models have their own
# tests (tests/methods/test_alibi.py).
ARCHITECTURES = {k: v for k, v in TINY_ARCHITECTURES.items()
                 if ARCHITECTURE_TABLE[v["model_type"]].positions == "rope"}
ALIBI_ARCHITECTURES = {k: v for k, v in TINY_ARCHITECTURES.items() if k not in ARCHITECTURES}


def tiny_model(arch: str = "llama", seed: int = 0, attn_implementation: str | None = None,
               **overrides) -> torch.nn.Module:
    """A 2-layer model with GQA (4 query heads, 2 kv heads), trained length 128, fp32, eval mode.
    ``attn_implementation``: transformers' default (sdpa) unless given (eager). ALiBi models
    (MPT) take only their own entry's keys, 4 heads without GQA, and eager attention, the only
    one MPT has."""
    kwargs = dict(TINY_ARCHITECTURES[arch])
    model_type = kwargs.pop("model_type")
    params = dict(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, max_position_embeddings=TRAIN_LENGTH, initializer_range=0.2,
        rope_theta=10000.0, tie_word_embeddings=False,
    )
    if arch in ALIBI_ARCHITECTURES:
        params = {}
        attn_implementation = attn_implementation or "eager"
    params.update(kwargs)
    params.update(overrides)
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(seed)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **extra)
    return model.eval()


def model_config(name: str):
    """conf/model/<name>.yaml as Hydra composes it (with conf/model_defaults.yaml under it), a DictConfig."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"model={name}"]).model


def random_ids(length: int, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=generator)


def tiny_params(method: str) -> dict:
    """A method's settings for models trained at 128 tokens: conf/model_method/tiny-random_<method>.yaml
    (the tiny-random model's), or none. A new method states them there, not here."""
    path = CONF / "model_method" / f"tiny-random_{method}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


TINY_PARAMS = {method: tiny_params(method) for method in METHODS}


def supports(method: str, arch: str) -> bool:
    """Whether ``method`` runs on the tiny ``arch`` model (the others refuse it with one line)."""
    kinds = METHODS[method].rope_kinds
    return kinds is None or rope_kind(tiny_model(arch)) in kinds


def archs_for(method: str) -> list[str]:
    """The RoPE architectures ``method`` supports, for parametrize("arch", ...)."""
    return [a for a in ARCHITECTURES if supports(method, a)]


def method_arch_pairs(methods=None) -> list[tuple[str, str]]:
    """Every (method, RoPE architecture) pair the method supports, for parametrize("method,arch", ...)."""
    return [(m, a) for a in ARCHITECTURES for m in (methods or METHODS) if supports(m, a)]


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request):
    return request.param

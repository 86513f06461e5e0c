"""YaRN (Peng et al. 2023): "NTK-by-parts" frequency interpolation plus an attention temperature.

With scale s, training length T and per-pair wavelength lambda = 2 pi / theta, each pair whose
r = T / lambda is above beta_fast keeps theta (extrapolated), each below beta_slow gets theta / s
(interpolated), and those between blend the two, h(theta) = (1 - gamma) theta / s + gamma theta;
the logits are multiplied by 1/t with sqrt(1/t) = 0.1 ln s + 1. Here without fine-tuning.

The frequencies and the temperature come from transformers' own ``rope_type: "yarn"``
(``ROPE_INIT_FUNCTIONS["yarn"]``), called on a copy of the model's config whose ``rope_parameters``
say: ``factor`` = s, ``original_max_position_embeddings`` = the method's train_length (T), the
method's ``beta_fast``/``beta_slow``/``attention_factor``, the model's own ``rope_theta`` and
``partial_rotary_factor``, and ``truncate: true`` (transformers' default, the YaRN authors' code).
cos/sin are the stock ones (:func:`rope_cos_sin`), both multiplied by the attention factor, so each
logit is scaled by its square, the paper's 1/t. No mscale/mscale_all_dim (DeepSeek's variant).

Where transformers (like the authors' released code) differs from the paper's text:

* the ramp gamma is linear in the pair index i between the indices where r = beta_fast and
  r = beta_slow, not linear in r (r falls exponentially with i), so pairs inside the ramp keep more
  of their original frequency (LLaMA-2 shape, T = 4096, D = 128: gamma up to 0.37 larger);
* with ``truncate`` those two indices are rounded outwards (floor / ceil) and clipped at 0 and at
  rotary_dim - 1, so a pair with r < beta_fast can still be kept whole (when T / 2 pi < beta_fast,
  as in the tiny test model, pair 0 is kept whole where the text gives gamma = 0.62);
* ``attention_factor`` overrides 0.1 ln s + 1 when set (the paper has no such knob).

``factor: None`` (default) is Dynamic YaRN (paper section 3.3): each forward uses
s = max(1, L / T), L = the largest position + 1 in that forward, so inputs up to T get exactly the
model's original frequencies and no temperature (it equals Origin there). It is stateless: one
long sample never leaves a larger s for the next. Cached decoding is then approximate: keys already
in the KV cache keep the frequencies (and factor) they were rotated with, as for Dynamic-NTK.
A number is static YaRN: one s for every length, so it changes the model even below T, and cached
decoding is exact.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.errors import HarnessError, UnsupportedModelError
from harness.methods.method import RotaryMethod
from harness.methods.rope import rope_cos_sin
from harness.validation import is_number

CACHE_SIZE = 16  # frequency tables kept; dynamic decoding meets a new s at every step


class YaRNRotary(nn.Module):
    """Drop-in replacement for a model's rotary module; returns (cos, sin) of shape (B, L, rotary_dim)."""

    def __init__(self, original: nn.Module, config, train_length: int, factor: float | None):
        super().__init__()
        self.original = original
        self.config = config  # a private copy of the model's config; rope_parameters say yarn, less the factor
        self.train_length = train_length
        self.factor = factor  # None: dynamic
        self._tables: dict[tuple[float, torch.device], tuple[torch.Tensor, float]] = {}

    def frequencies(self, length: int, device: torch.device) -> tuple[torch.Tensor, float]:
        """(inv_freq (rotary_dim / 2,) float32 on ``device``, attention factor) for a forward whose
        largest position + 1 is ``length``."""
        if self.factor is None and length <= self.train_length:
            return self.original.inv_freq, 1.0  # dynamic below T: the model's own RoPE, exactly
        factor = self.factor if self.factor is not None else length / self.train_length
        key = (factor, torch.device(device))
        if key not in self._tables:
            if len(self._tables) >= CACHE_SIZE:
                self._tables.clear()
            config = copy.deepcopy(self.config)
            config.rope_parameters = dict(config.rope_parameters, factor=factor)
            with torch.device(device):  # transformers' yarn builds its ramp without a device
                inv_freq, scaling = ROPE_INIT_FUNCTIONS["yarn"](config, device)
            self._tables[key] = inv_freq, float(scaling)
        return self._tables[key]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # static: no need to read the length (a device sync on a GPU)
        length = self.train_length if self.factor is not None else int(position_ids.max()) + 1
        inv_freq, scaling = self.frequencies(length, position_ids.device)
        cos, sin = rope_cos_sin(position_ids.reshape(-1), inv_freq, scaling, x.dtype)
        return cos.view(*position_ids.shape, -1), sin.view(*position_ids.shape, -1)


class YaRN(RotaryMethod):
    """YaRN through transformers' rope_type "yarn"; ``factor`` None is Dynamic YaRN (s = max(1, L / T)).

    ``beta_fast``/``beta_slow`` 32/1 are the paper's alpha/beta for LLaMA; ``attention_factor`` None
    is 0.1 ln s + 1. Cached decoding is approximate only in the dynamic mode (see above)."""

    name = "yarn"
    label = "YaRN"
    color = "#e377c2"
    marker = "*"
    order = 80
    cached_decoding = "approximate"  # the default, dynamic; static YaRN is exact

    def __init__(self, train_length: int, factor: float | None = None, beta_fast: float = 32.0,
                 beta_slow: float = 1.0, attention_factor: float | None = None):
        super().__init__(train_length)
        if factor is not None and (not is_number(factor) or factor < 1):
            raise HarnessError(f"yarn factor must be null (dynamic) or a number >= 1, got {factor!r}")
        # transformers reads beta_fast/beta_slow with "or 32"/"or 1": a zero would silently become the default
        if not (is_number(beta_fast) and is_number(beta_slow) and beta_fast > beta_slow > 0):
            raise HarnessError(f"yarn needs beta_fast > beta_slow > 0, got beta_fast={beta_fast!r}, "
                               f"beta_slow={beta_slow!r}")
        if attention_factor is not None and (not is_number(attention_factor) or attention_factor <= 0):
            raise HarnessError("yarn attention_factor must be null (0.1 ln s + 1) or a number > 0, "
                               f"got {attention_factor!r}")
        self.factor = None if factor is None else float(factor)
        self.beta_fast = float(beta_fast)
        self.beta_slow = float(beta_slow)
        self.attention_factor = None if attention_factor is None else float(attention_factor)

    def rotary_for(self, model: nn.Module, original: nn.Module) -> nn.Module:
        """A :class:`YaRNRotary` on a copy of the model's config whose rope_parameters say yarn."""
        config = copy.deepcopy(model.config)
        if getattr(config, "head_dim", None) is None:  # transformers' yarn reads head_dim when the attribute exists
            config.head_dim = config.hidden_size // config.num_attention_heads
        # Phi-3 keeps its pretraining length outside rope_parameters, and transformers prefers that one
        if hasattr(config, "original_max_position_embeddings"):
            config.original_max_position_embeddings = self.train_length
        params = dict(model.config.rope_parameters, rope_type="yarn",
                      original_max_position_embeddings=self.train_length,
                      beta_fast=self.beta_fast, beta_slow=self.beta_slow, truncate=True)
        if self.attention_factor is not None:
            params["attention_factor"] = self.attention_factor
        config.rope_parameters = params
        rotary = YaRNRotary(original, config, self.train_length, self.factor)
        inv_freq, _ = rotary.frequencies(2 * self.train_length, original.inv_freq.device)
        if inv_freq.shape != original.inv_freq.shape:  # e.g. a rotary dim transformers' yarn computes otherwise
            raise UnsupportedModelError(
                f"method 'yarn': transformers' yarn gives {inv_freq.shape[-1]} frequencies for model type "
                f"{model.config.model_type!r}, whose rotary module has {original.inv_freq.shape[-1]}"
            )
        return rotary

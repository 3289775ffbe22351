"""Rotary position embeddings: default, linear, dynamic NTK, llama3 and yarn frequency schedules,
applied rotate-half style to the first `rotary_dim` channels of each head (all of them unless the
config asks for a partial rotary factor, as Persimmon does)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_frequencies(
    params: dict[str, Any], dim: int, max_position_embeddings: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies `(dim // 2,)` and the attention scaling for a `rope_parameters` dict."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    base = float(params["rope_theta"])
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    scaling = 1.0
    if rope_type == "default":
        inv_freq = 1.0 / base**exponents
    elif rope_type == "linear":
        inv_freq = 1.0 / base**exponents / params["factor"]
    elif rope_type == "dynamic":
        factor = params["factor"]
        seq_len = max(seq_len or max_position_embeddings, max_position_embeddings)
        base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / base**exponents
    elif rope_type == "llama3":
        inv_freq = _llama3(1.0 / base**exponents, params, max_position_embeddings)
    elif rope_type == "yarn":
        inv_freq, scaling = _yarn(base, dim, params, max_position_embeddings)
    else:
        raise ConfigError(f"rope_parameters.rope_type: expected one of {ROPE_TYPES}, found {rope_type!r}")
    return inv_freq, scaling


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any], max_position_embeddings: int) -> torch.Tensor:
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    context = params.get("original_max_position_embeddings", max_position_embeddings)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    # between the two wavelength bounds, blend the scaled and unscaled frequencies
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return torch.where(medium, blended, scaled)


def _yarn(base: float, dim: int, params: dict[str, Any], max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    original = params.get("original_max_position_embeddings", max_position_embeddings)
    factor = params.get("factor") or max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    position_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * position_freqs)) * (1 - extrapolation) + (1.0 / position_freqs) * extrapolation
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions: `forward(position_ids (batch, seq))` → two `(batch, seq, dim)`."""

    def __init__(self, dim: int, params: dict[str, Any], max_position_embeddings: int) -> None:
        super().__init__()
        self.dim = dim
        self.params = dict(params)
        self.rope_type = self.params.get("rope_type", self.params.get("type", "default"))
        self.max_position_embeddings = max_position_embeddings
        self.register_buffer("inv_freq", torch.empty(dim // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        # computed on the CPU even while a model is built on the meta device: the loader calls this
        # again once the model is real, and meta arithmetic would import torch._dynamo (tens of MB)
        with torch.device("cpu"):
            inv_freq, self.attention_scaling = rope_frequencies(self.params, self.dim, self.max_position_embeddings)
        device = None if self.inv_freq.is_meta else self.inv_freq.device
        self.inv_freq = inv_freq.to(device)
        self.cached_len = self.max_position_embeddings

    def _dynamic_update(self, position_ids: torch.Tensor) -> None:
        # dynamic NTK stretches the base once positions pass the trained length, and returns to the
        # original frequencies when a shorter sequence comes again (as the reference does)
        seq_len = int(position_ids.max()) + 1
        if seq_len > self.cached_len:
            inv_freq, _ = rope_frequencies(self.params, self.dim, self.max_position_embeddings, seq_len)
            self.inv_freq = inv_freq.to(self.inv_freq.device)
            self.cached_len = seq_len
        elif seq_len < self.max_position_embeddings < self.cached_len:
            self.reset_buffers()

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_type == "dynamic":
            self._dynamic_update(position_ids)
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        # the float32 angles' cos and sin taken in float64, then rounded: float32's correctly rounded
        # values, where PyTorch's float32 kernels are within an ulp or two of them. On an AMX Xeon VM
        # the first float32 `cos` of a process now and then returned values off by 1.5e-4 (bench/RESULTS.md),
        # which made a first prompt's outputs differ from later ones.
        angles = torch.cat((freqs, freqs), dim=-1).double()
        cos, sin = angles.cos().float(), angles.sin().float()
        return (cos * self.attention_scaling).to(dtype), (sin * self.attention_scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x (batch, heads, seq, head_dim)` by `cos/sin (batch, seq, rotary_dim)`.

    Channel i pairs with i + rotary_dim/2 inside the rotary part; channels past rotary_dim pass.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rotated * cos + _rotate_half(rotated) * sin, passed), dim=-1)

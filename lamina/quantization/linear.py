"""Quantized linear layers: int8 (per output channel), int4 (grouped, asymmetric) and nf4.

Each layer keeps its quantized weight as frozen parameters in a plain layout — rows are output channels,
so the checkpoint name maps that split fused q/k/v or gate/up rows work on them unchanged — and
derives whatever a kernel needs from them on first use.

Kernels, chosen by measurement on a 2-core AVX-512 CPU at SmolLM2-135M's shapes (bench/RESULTS.md):
- CPU, a few tokens (decode): fbgemm's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`),
  activations quantized on the fly. It reads one byte per weight and was the fastest matrix-vector
  product measured; PyTorch's weight-only packed kernels (`_weight_int8pack_mm`,
  `_weight_int4pack_mm_for_cpu`) were several times slower at batch 1. int4 layers run on the
  same kernel through an int8 copy of their 4-bit values (one more rounding, per output channel).
- Many tokens (prefill) and other devices: dequantize the weight to the compute dtype and use
  `F.linear`; the matmul is compute-bound there, so the dequantization is amortised, and
  activations keep full precision.
- nf4 always computes in its compute dtype through dequantization, as bitsandbytes defines it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

# up to this many tokens per call (decoding a small batch) the CPU int8 kernel runs, token by token
FAST_KERNEL_MAX_TOKENS = 8

# the 16 values of 4-bit NormalFloat (quantiles of a standard normal, rescaled to [-1, 1])
NF4_CODES = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """`(out, in)` integers in [0, 16) → `(out, in/2)` uint8, even columns in the low nibble."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: `(out, in/2)` uint8 → `(out, in)` uint8 codes."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.shape[0], -1)


class QuantizedLinear(nn.Module):
    """Common part: shapes, the optional bias and the choice of kernel. `forward(x (..., in))` →
    `(..., out)` in x's dtype, computed in the compute dtype (None: x's dtype)."""

    method = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype | None,
                 device: torch.device | str | None = None, smoothed: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias = _frozen(torch.zeros(out_features, device=device)) if bias else None
        # SmoothQuant (see `smooth`): the int8 kernel multiplies inputs by input_scale = 1/s and its
        # weight by s, which moves activation outliers into the weights before they are rounded
        self.input_scale = _frozen(torch.ones(in_features, device=device)) if smoothed else None
        self._int8_kernel: tuple[tuple, torch.Tensor] | None = None  # (weight identity, fbgemm packed weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight `(out, in)` in `dtype`."""
        raise NotImplementedError

    def kernel_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 kernel's weight: int8 `(out, in)` and one float32 scale per output channel `(out,)`."""
        if self.input_scale is None and isinstance(self, Int8Linear):
            return self.weight, self.weight_scale.float()
        weight = self.dequantize()
        return quantize_int8(weight if self.input_scale is None else weight / self.input_scale.float())

    def uses_fast_kernel(self, x: torch.Tensor) -> bool:
        tokens = x.numel() // self.in_features
        return x.device.type == "cpu" and tokens <= FAST_KERNEL_MAX_TOKENS and "fbgemm" in torch.backends.quantized.supported_engines

    def _fbgemm_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight.device)
        if self._int8_kernel is None or self._int8_kernel[0] != key:
            weight, scale = self.kernel_weight()
            zero = torch.zeros(weight.shape[0], dtype=torch.long)
            with warnings.catch_warnings():
                # quantized tensors are deprecated in PyTorch but remain the way into fbgemm's kernel
                warnings.simplefilter("ignore", UserWarning)
                qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero, 0)
            self._int8_kernel = (key, torch.ops.quantized.linear_prepack(qweight, None))
        return self._int8_kernel[1]

    def smooth(self, weight: torch.Tensor, input_absmax: torch.Tensor, strength: float) -> None:
        """SmoothQuant's migration for the int8 kernel: with per-input-channel activation maxima
        `input_absmax (in,)`, s = absmax^α / max|W_col|^(1-α); the kernel's weight becomes W·diag(s)
        and its inputs x/s. The stored weight stays W, so the dequantized path is unaffected."""
        weight = weight.float()
        floor = torch.finfo(torch.float32).eps
        scale = input_absmax.float().clamp(min=floor) ** strength / weight.abs().amax(0).clamp(min=floor) ** (1 - strength)
        self.input_scale = _frozen(1 / scale.clamp(min=floor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        if self.method != "nf4" and self.uses_fast_kernel(x):
            inputs = x if self.input_scale is None else x * self.input_scale.to(x.dtype)
            # one call per token: fbgemm rounds a whole call's activations with one scale
            rows = inputs.reshape(-1, self.in_features).float().split(1)
            out = torch.cat([torch.ops.quantized.linear_dynamic(row, self._fbgemm_weight(), True) for row in rows])
            out = out.view(*x.shape[:-1], self.out_features).to(dtype)
        else:
            out = self._dequantized_linear(x.to(dtype), dtype)
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        # like bitsandbytes: computed in the compute dtype, handed back in the caller's dtype
        return out.to(x.dtype)

    def _dequantized_linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.linear(x, self.dequantize(dtype))


class Int8Linear(QuantizedLinear):
    """Symmetric int8 weights, one scale per output channel: `weight (out, in) int8`,
    `weight_scale (out,) float32`."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, smoothed: bool = False) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device, smoothed)
        self.weight = _frozen(torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.weight_scale = _frozen(torch.ones(out_features, device=device))

    def set_weight(self, weight: torch.Tensor) -> None:
        codes, scale = quantize_int8(weight)
        self.weight, self.weight_scale = _frozen(codes), _frozen(scale)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def _dequantized_linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # scaling the output rows is cheaper than scaling the weight when tokens < in_features
        return F.linear(x, self.weight.to(dtype)) * self.weight_scale.to(dtype)


class Int4Linear(QuantizedLinear):
    """Asymmetric 4-bit weights in groups of `group_size` inputs: w = code * scale + minimum.
    `weight (out, in/2) uint8` (two codes a byte), `weight_scale`, `weight_min (out, in/group)`."""

    method = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 group_size: int = 64, device: torch.device | str | None = None, smoothed: bool = False) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device, smoothed)
        self.group_size = group_size
        groups = in_features // group_size
        self.weight = _frozen(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.weight_scale = _frozen(torch.ones(out_features, groups, device=device))
        self.weight_min = _frozen(torch.zeros(out_features, groups, device=device))

    def set_weight(self, weight: torch.Tensor) -> None:
        groups = weight.float().view(self.out_features, -1, self.group_size)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        codes = ((groups - low[..., None]) / scale[..., None]).round_().clamp_(0, 15)
        self.weight = _frozen(pack_nibbles(codes.view(self.out_features, self.in_features)))
        self.weight_scale, self.weight_min = _frozen(scale), _frozen(low)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_nibbles(self.weight).view(self.out_features, -1, self.group_size).to(dtype)
        weight = codes * self.weight_scale.to(dtype)[..., None] + self.weight_min.to(dtype)[..., None]
        return weight.view(self.out_features, self.in_features)


class NF4Linear(QuantizedLinear):
    """4-bit NormalFloat weights in blocks of `group_size`: w = NF4_CODES[code] * absmax.
    `weight (out, in/2) uint8`, `weight_absmax (out, in/group) float32`."""

    method = "nf4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 group_size: int = 64, device: torch.device | str | None = None, smoothed: bool = False) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device, smoothed)
        self.group_size = group_size
        self.weight = _frozen(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.weight_absmax = _frozen(torch.ones(out_features, in_features // group_size, device=device))

    def set_weight(self, weight: torch.Tensor) -> None:
        blocks = weight.float().view(self.out_features, -1, self.group_size)
        absmax = blocks.abs().amax(-1).clamp(min=torch.finfo(torch.float32).tiny)
        normalised = blocks / absmax[..., None]
        codes_table = NF4_CODES.to(weight.device)
        # nearest code: the table is sorted, so compare against the midpoints between neighbours
        midpoints = (codes_table[1:] + codes_table[:-1]) / 2
        codes = torch.bucketize(normalised, midpoints)
        self.weight = _frozen(pack_nibbles(codes.view(self.out_features, self.in_features)))
        self.weight_absmax = _frozen(absmax)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_nibbles(self.weight).view(self.out_features, -1, self.group_size).long()
        values = NF4_CODES.to(self.weight.device, dtype)[codes] * self.weight_absmax.to(dtype)[..., None]
        return values.view(self.out_features, self.in_features)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """Quantized tensors are parameters (so checkpoints save and load them like any weight) that
    never take gradients."""
    return nn.Parameter(tensor, requires_grad=False)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(out, in)` float → symmetric int8 codes `(out, in)` and float32 scales `(out,)`."""
    weight = weight.float()
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (weight / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return codes, scale


LAYERS: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}

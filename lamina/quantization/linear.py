"""Quantized linear layers: int8 (per output channel), int4 (grouped, asymmetric) and nf4.

Each layer keeps its quantized weight as frozen parameters in a plain layout — rows are output
channels, so the checkpoint name maps that split fused q/k/v or gate/up rows work on them unchanged —
and derives what a packed kernel needs from them when the weight is set, loaded or moved.

Weights are quantized; activations keep their precision except inside lamina's CPU kernels, which
round them to int8 per block of 32 inputs (as llama.cpp's Q8 activations; a relative error near
0.4%, below the weights'). lamina's own kernels (`lamina.kernels`) beat PyTorch's packed int8 and
int4 products and its bf16 / fp32 `F.linear` on one token (bench/RESULTS.md); fbgemm's dynamic
int8 is not used, as it rounds activations to 7 bits per token (perplexity over the 2% bound).
- A few rows (decoding): on the CPU lamina's kernels where they build (else PyTorch's packed
  kernels, bf16 activations); on CUDA tinygemm's `_weight_int4pack_mm` for int4 (compute capability
  8.0 and up), while int8 takes the dequantized product there too: in the compiled step inductor
  fuses the int8 → bf16 conversion into the one-row product (`int8_fused_on_cuda`), several times
  faster than `_weight_int8pack_mm` there (bench/RESULTS.md).
- Many rows (a prompt): dequantize and `F.linear`, which beat the packed kernels there. Half
  precision computes in float32 on CPUs without half-precision units (as `layers.linear.Linear`).
  Float32 prompts of int8 layers on CPUs with AMX or AVX-512 VNNI, and of int4 layers on CPUs with
  AMX, take split products instead (`split_products_ready`): the same product as integer sums over
  three int8 pieces of each activation row, as accurate as float32's and faster on those CPUs.
- nf4 always dequantizes into its compute dtype, as bitsandbytes defines it: a memory format.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..layers.linear import Linear, float32_if_slow, kernel_weight

FP16_MAX, FP16_TINY = 65504.0, 2.0**-24  # float16's largest finite and smallest positive values
# weights are quantized in blocks of rows of about this many elements (bounds the float32 temporaries)
QUANTIZE_BLOCK_ELEMENTS = 1 << 20

# up to this many rows a call (decoding a batch) the packed kernels run
PACKED_KERNEL_MAX_ROWS = 16

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
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias = _frozen(torch.zeros(out_features, device=device)) if bias else None
        # the packed kernel and its operands, on the weight's device: kernel(rows, *operands) → (rows, out)
        self._packed: tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None = None
        # the split product for float32 prompts taking the same operands (`split_products_ready`), or None
        self._split: Callable[..., torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight `(out, in)` in `dtype`."""
        raise NotImplementedError

    def set_weight(self, weight: torch.Tensor, release: Callable[[torch.Tensor], None] | None = None) -> None:
        """Quantize `weight (out, in)` into this layer's parameters, a block of rows at a time so
        that the float temporaries stay small whatever the layer's size; `release(block)` is called
        on each block of `weight` once it is quantized (loading drops its file pages there)."""
        rows = max(1, QUANTIZE_BLOCK_ELEMENTS // self.in_features)
        quantized: dict[str, torch.Tensor] = {}
        for start in range(0, weight.shape[0], rows):
            block = weight[start : start + rows]
            for name, value in self._quantize_rows(block).items():
                if name not in quantized:  # written in place: no second copy to concatenate
                    quantized[name] = torch.empty((weight.shape[0], *value.shape[1:]), dtype=value.dtype, device=value.device)
                quantized[name][start : start + rows] = value
            if release is not None:
                release(block)
        for name, value in quantized.items():
            setattr(self, name, _frozen(value))
        self.refresh_packed()

    def _quantize_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The quantized parameters (by name) of `rows (n, in)` of the weight."""
        raise NotImplementedError

    def pack(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        """The packed kernel for the weight's device and its operands, or None where it has none."""
        return None

    def refresh_packed(self) -> None:
        """Derive the packed operands again (after the weight was set, loaded or moved)."""
        self._packed = None if self.weight.is_meta else self.pack()
        self._split = None if self._packed is None else _split_product(self._packed[0])

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_packed()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.refresh_packed()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.product(x)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        # like bitsandbytes: computed in the compute dtype, handed back in the caller's dtype
        return out.to(x.dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """`x (..., in)` times the weight, without the bias: `(..., out)` in the compute dtype."""
        dtype = self.compute_dtype or x.dtype
        rows = x.reshape(-1, self.in_features)
        # the kernels have no backward: a product gradients flow through takes the dequantized weight
        differentiated = torch.is_grad_enabled() and x.requires_grad
        if self._packed is not None and rows.shape[0] <= PACKED_KERNEL_MAX_ROWS and not differentiated:
            kernel, operands = self._packed
            out = kernel(rows.contiguous(), *operands)  # the CUDA kernels take no strided rows
        else:
            work = float32_if_slow(dtype, x.device)
            if work == torch.float32 and self._split is not None and not differentiated:
                out = self._split(rows.float(), *self._packed[1])  # the float32 product (`split_products_ready`)
            else:
                out = self._dequantized_linear(rows.to(work), work)
        return out.to(dtype).view(*x.shape[:-1], self.out_features)

    def _dequantized_linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.linear(x, self.dequantize(dtype))


class Int8Linear(QuantizedLinear):
    """Symmetric int8 weights, one scale per output channel: `weight (out, in) int8`,
    `weight_scale (out,) float32`."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.weight = _frozen(torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.weight_scale = _frozen(torch.ones(out_features, device=device))

    def _quantize_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale = quantize_int8(rows)
        return {"weight": codes, "weight_scale": scale}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def _dequantized_linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # scaling the output rows is cheaper than scaling the weight when tokens < in_features
        return F.linear(x, self.weight.to(dtype)) * self.weight_scale.to(dtype)

    def pack(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        device = self.weight.device.type
        if device == "cpu" and self.in_features % 32 == 0 and (ops := kernels.ops()) is not None:
            return ops.int8_linear, (self.weight.contiguous(), self.weight_scale.float().contiguous())
        if device != "cpu":  # on CUDA the dequantized product, which the compiled step fuses
            return None
        return _int8pack_product, (self.weight, self.weight_scale.to(torch.bfloat16))


class Int4Linear(QuantizedLinear):
    """Asymmetric 4-bit weights in groups of `group_size` inputs: w = code * scale + minimum.
    `weight (out, in/2) uint8` (two codes a byte), `weight_scale`, `weight_min (out, in/group)`
    float16 (groups whose range passes float16's are clamped to it)."""

    method = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 group_size: int = 64, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.group_size = group_size
        groups = in_features // group_size
        self.weight = _frozen(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.weight_scale = _frozen(torch.ones(out_features, groups, dtype=torch.float16, device=device))
        self.weight_min = _frozen(torch.zeros(out_features, groups, dtype=torch.float16, device=device))

    def _quantize_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        groups = rows.float().view(rows.shape[0], -1, self.group_size)
        low, high = groups.amin(-1), groups.amax(-1)
        # float16 scale and minimum (as GGUF's Q4_1 stores them: a Q4_1 file's groups come back
        # exactly), the codes rounded against the stored values
        low = low.clamp(-FP16_MAX, FP16_MAX).half()
        scale = ((high - low.float()) / 15).clamp(FP16_TINY, FP16_MAX).half()
        codes = ((groups - low.float()[..., None]) / scale.float()[..., None]).round_().clamp_(0, 15)
        return {"weight": pack_nibbles(codes.view(rows.shape)), "weight_scale": scale, "weight_min": low}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # written in place, nibbles straight into the output: a prompt's every layer dequantizes,
        # so this is a sizeable share of a prefill
        weight = torch.empty(self.out_features, self.in_features // 2, 2, dtype=dtype, device=self.weight.device)
        weight[..., 0].copy_(self.weight & 15)
        weight[..., 1].copy_(self.weight >> 4)
        groups = weight.view(self.out_features, -1, self.group_size)
        groups.mul_(self.weight_scale.to(dtype)[..., None]).add_(self.weight_min.to(dtype)[..., None])
        return weight.view(self.out_features, self.in_features)

    def pack(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        device = self.weight.device.type
        if device == "cpu" and self.group_size % 32 == 0 and (ops := kernels.ops()) is not None:
            return ops.int4_linear, (self.weight.contiguous(), self.weight_scale.half().contiguous(),
                                     self.weight_min.half().contiguous())
        codes = unpack_nibbles(self.weight)
        if device == "cpu" and self.out_features % 16 == 0:  # the packing's own limit
            packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        elif device == "cuda" and torch.cuda.get_device_capability(self.weight.device) >= (8, 0):
            # tinygemm: two codes a byte, even columns in the high nibble; inner k-tiles of 16
            # that divide the input width
            tiles = next((t for t in (8, 4, 2) if self.in_features % (16 * t) == 0), None)
            if tiles is None:
                return None
            packed = torch._convert_weight_to_int4pack((codes[:, 0::2] << 4) | codes[:, 1::2], tiles)
        else:
            return None
        # the kernels read w = (code - 8) * scale + zero: zero = minimum + 8 * scale, as
        # (in/group, out, 2) bf16 pairs
        scale, low = self.weight_scale.float(), self.weight_min.float()
        scales_and_zeros = torch.stack((scale, low + 8 * scale), dim=-1).transpose(0, 1).contiguous()
        return _int4pack_product, (packed, scales_and_zeros.to(torch.bfloat16), self.group_size)


class NF4Linear(QuantizedLinear):
    """4-bit NormalFloat weights in blocks of `group_size`: w = NF4_CODES[code] * absmax.
    `weight (out, in/2) uint8`, `weight_absmax (out, in/group) float32`."""

    method = "nf4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype: torch.dtype | None = None,
                 group_size: int = 64, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.group_size = group_size
        self.weight = _frozen(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.weight_absmax = _frozen(torch.ones(out_features, in_features // group_size, device=device))

    def _quantize_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        blocks = rows.float().view(rows.shape[0], -1, self.group_size)
        absmax = blocks.abs().amax(-1).clamp(min=torch.finfo(torch.float32).tiny)
        normalised = blocks / absmax[..., None]
        codes_table = NF4_CODES.to(rows.device)
        # nearest code: the table is sorted, so compare against the midpoints between neighbours
        midpoints = (codes_table[1:] + codes_table[:-1]) / 2
        codes = torch.bucketize(normalised, midpoints)
        return {"weight": pack_nibbles(codes.view(rows.shape)), "weight_absmax": absmax}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_nibbles(self.weight).view(self.out_features, -1, self.group_size).long()
        values = NF4_CODES.to(self.weight.device, dtype)[codes] * self.weight_absmax.to(dtype)[..., None]
        return values.view(self.out_features, self.in_features)


def uses_lamina_kernels(model: nn.Module) -> bool:
    """Whether a decode step of `model` runs through lamina's own kernels: its quantized layers', or
    the one-row float32 and bf16 products of its `Linear` layers on the CPU. Loads the kernels."""
    plain = any(isinstance(m, Linear) and kernel_weight(m.weight) for m in model.modules())
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    ops = kernels.ops() if plain or quantized else None
    return ops is not None and (plain or any(
        m._packed is not None and m._packed[0] in (ops.int4_linear, ops.int8_linear) for m in quantized))


def int8_fused_on_cuda(model: nn.Module) -> bool:
    """Whether `model` has int8 layers on a GPU, whose one-row products inductor fuses with the
    weight's dequantization when it decomposes them (coordinate descent tuning, which enables that
    decomposition, is what `_compile_arguments` adds for them)."""
    return any(isinstance(m, Int8Linear) and m.weight.is_cuda for m in model.modules())


@functools.cache
def split_products_ready(name: str) -> bool:
    """Whether quantized layers' float32 prompts (many rows) take the split product `name` here: each
    activation row as three int8 pieces (`lamina/kernels/linear_cpu.cpp`) in integer products, the
    float32 product's result to its own rounding error, faster on CPUs with int8 matrix units.

    - "int8_split_linear" (int8 layers) runs oneDNN's int8 GEMM (`torch._int_mm`): with AMX or
      AVX-512 VNNI faster than the float32 product (bench/RESULTS.md). Without VNNI oneDNN's int8
      kernels saturate 16-bit pair sums (off by 10^5 under ONEDNN_MAX_CPU_ISA=AVX2): a probe of
      extreme values checks the sums are exact.
    - "int4_split_linear" (int4 layers) is lamina's own AMX kernel (per-group scales between tile
      products): only on CPUs with AMX-INT8, where a probe checks that it runs and agrees."""
    if name == "int8_split_linear":
        if not kernels.cpu_has("avx512_vnni", "amx_int8"):
            return False
        generator = torch.Generator().manual_seed(0)
        a = torch.randint(-127, 128, (32, 256), generator=generator, dtype=torch.int8)
        b = torch.randint(-127, 128, (64, 256), generator=generator, dtype=torch.int8)
        a[0], b[0] = 127, -127
        return torch.equal(torch._int_mm(a, b.t()).double(), a.double() @ b.double().t())
    if name == "int4_split_linear" and kernels.cpu_has("amx_int8") and (ops := kernels.loaded()) is not None:
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, (16, 64), generator=generator)
        scale, low = torch.rand(16, 2, generator=generator).half(), -torch.rand(16, 2, generator=generator).half()
        x = torch.randn(20, 64, generator=generator)
        try:
            out = ops.int4_split_linear(x, pack_nibbles(codes), scale, low)
        except RuntimeError:  # built without AMX, or the system refused its tile state
            return False
        weight = codes.view(16, 2, 32).double() * scale.double()[..., None] + low.double()[..., None]
        expected = x.double() @ weight.view(16, 64).T
        return bool((out.double() - expected).abs().max() <= 1e-5 * expected.abs().max())
    return False


def _split_product(kernel: Callable) -> Callable | None:
    """The split product taking the packed CPU kernel `kernel`'s operands, where it runs here."""
    ops = kernels.loaded()
    if ops is not None:
        for packed, split in ((ops.int8_linear, "int8_split_linear"), (ops.int4_linear, "int4_split_linear")):
            if kernel is packed and split_products_ready(split):
                return getattr(ops, split)
    return None


def _int8pack_product(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(rows.to(torch.bfloat16), weight, scale)


def _int4pack_product(rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    kernel = torch._weight_int4pack_mm_for_cpu if rows.device.type == "cpu" else torch._weight_int4pack_mm
    return kernel(rows.to(torch.bfloat16), packed, group_size, scales_and_zeros)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """Quantized tensors are parameters (so checkpoints save and load them like any weight) that
    never take gradients."""
    return nn.Parameter(tensor, requires_grad=False)


def quantize_int8(weight: torch.Tensor, absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(out, in)` float → symmetric int8 codes `(out, in)` and float32 scales `(out,)`; `absmax
    (out,)`: each row's largest magnitude where `weight` holds only part of the row (None: its own)."""
    weight = weight.float()
    absmax = weight.abs().amax(dim=1) if absmax is None else absmax
    scale = (absmax / 127).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (weight / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return codes, scale


LAYERS: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}


def new_layer(method: str, in_features: int, out_features: int, group_size: int,
              layers: Mapping[str, type[QuantizedLinear]] = LAYERS, **kwargs) -> QuantizedLinear:
    """An empty `method` layer of `layers[method]` (int8's per-channel scales take no group size)."""
    groups = {} if method == "int8" else {"group_size": group_size}
    return layers[method](in_features, out_features, **groups, **kwargs)


def input_block(method: str, group_size: int) -> int:
    """The inputs of a `method` layer that are read together: a 4-bit group, or the block of 32
    activations lamina's int8 kernels round together. A layer split by inputs (tensor parallelism)
    is cut only at these boundaries, so each rank's part computes what one process computes."""
    return 32 if method == "int8" else group_size

"""`Linear`: `nn.Linear` that runs many-row bf16/fp16 products in float32 on CPUs without native
half-precision matrix units.

Without AVX-512 (BF16) a bf16 matmul on the CPU falls back to slow reference kernels, several
times slower on a prompt than the same product with each weight upcast to float32 (bench/RESULTS.md).
The upcast costs one pass over the weight per call, which a prompt's
hundreds of rows amortise; the rounding is the half kernel's own (float32 accumulation, the result
rounded once to the input's dtype). Fewer rows (decoding one or a few sequences) keep the
half-precision kernel: there the product is memory-bound and reading half the bytes wins.

On the CPU, products of a few bf16 or float32 rows (`kernel_max_rows`) run lamina's own kernels
(`lamina.kernels`, float32 sums of bf16 products like PyTorch's, then one rounding). The bf16 one
streams the weight faster than PyTorch's bf16 matrix-vector product; the float32 one as fast as
PyTorch's, but it takes the zero-stride one-row inputs
inductor passes under `torch.compile` as they are, where `mm` copies each first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

# rows per call from which a half-precision product on such a CPU runs in float32: where the
# upcast overtook bf16 over SmolLM2's layer shapes (bench/RESULTS.md)
UPCAST_MIN_ROWS = 6
# rows per call up to which bf16 and float32 products on the CPU run lamina's kernels, which read
# each weight row once for all the activation rows: one or two rows are memory-bound; float32 up
# to a batch of 8, where lamina's kernel still beat PyTorch's (bench/RESULTS.md)
KERNEL_MAX_ROWS = {torch.float32: 8, torch.bfloat16: 2}
# the same for bf16 on CPUs without bf16 units, where the alternatives are PyTorch's slow reference
# kernel or an upcast weight, both slower than lamina's kernel up to 16 rows (bench/RESULTS.md)
SLOW_HALF_KERNEL_MAX_ROWS = 16
KERNELS = {torch.bfloat16: "bf16_linear", torch.float32: "f32_linear"}
_SLOW_HALF = {
    torch.bfloat16: not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    torch.float16: not torch.ops.mkldnn._is_mkldnn_fp16_supported(),
}


def kernel_weight(weight: torch.Tensor) -> bool:
    """Whether a `Linear` with this weight hands one- or two-row products to lamina's kernels: a
    float32 or bf16 weight on the CPU, contiguous (GPT-2's are transposed views of its Conv1D's)."""
    return weight.device.type == "cpu" and weight.dtype in KERNELS and weight.is_contiguous()


def kernel_max_rows(dtype: torch.dtype) -> int:
    """Rows per call up to which a `dtype` product on the CPU runs lamina's kernel."""
    return SLOW_HALF_KERNEL_MAX_ROWS if _SLOW_HALF.get(dtype, False) else KERNEL_MAX_ROWS.get(dtype, 0)


def float32_if_slow(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a many-row product of `dtype` inputs should run in on `device`."""
    return torch.float32 if device.type == "cpu" and _SLOW_HALF.get(dtype, False) else dtype


class Linear(nn.Linear):
    """`nn.Linear` with the same parameters and checkpoint names; see the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == self.weight.dtype and x.device == self.weight.device and kernel_weight(self.weight)
                and x.numel() <= kernel_max_rows(x.dtype) * x.shape[-1]
                # the kernels have no backward: training keeps PyTorch's product
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                # nor autocast's dtype rules: under autocast F.linear picks the product's dtype
                and not torch.is_autocast_enabled(x.device.type)):
            # under torch.compile only a kernel already loaded (building is not traceable)
            ops = kernels.loaded() if torch.compiler.is_compiling() else kernels.ops()
            if ops is not None:
                out = getattr(ops, KERNELS[x.dtype])(x.reshape(-1, x.shape[-1]), self.weight)
                if self.bias is not None:
                    out = out + self.bias
                return out.to(x.dtype).view(*x.shape[:-1], self.out_features)
        work = float32_if_slow(x.dtype, x.device)
        if work != x.dtype and x.numel() >= UPCAST_MIN_ROWS * x.shape[-1]:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)

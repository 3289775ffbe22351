"""MEGA's normalisation layers: scale norm, its RMS norm, and the wrapper that picks one by name.

The wrapper keeps the chosen layer under `.norm`, as MEGA checkpoints name it
(`…norm.norm.scalar`, `…norm.norm.running_mean`, …).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

NORMALIZATION_TYPES = ("scalenorm", "layernorm", "rmsnorm", "batchnorm", "syncbatchnorm")


class ScaleNorm(nn.Module):
    """`g · x / sqrt(mean(x²) + eps)` over the last dimension with one learned scalar `g` (`scalar`)."""

    def __init__(self, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scalar is not None:
            x = self.scalar * x
        return x * inv_rms

    def reset_parameters(self) -> None:
        if self.scalar is not None:
            nn.init.ones_(self.scalar)


class MegaRMSNorm(nn.Module):
    """MEGA's "rmsnorm" as transformers 4.x computes it: `x · weight`.

    The reference computes the root mean square but never divides by it, so checkpoints trained
    with `normalization_type="rmsnorm"` expect a plain elementwise scale; lamina keeps those
    numerics rather than a true RMS norm that would change every such model's outputs.
    """

    def __init__(self, size: int, affine: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.weight is None else x * self.weight

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)


class SequenceNorm(nn.Module):
    """One of MEGA's norms over `(batch, seq, hidden)` inputs.

    "batchnorm" and "syncbatchnorm" both normalise each hidden feature over batch and sequence
    (running statistics in eval); lamina runs on one device, where the two are the same layer.
    """

    def __init__(self, kind: str, size: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if kind == "scalenorm":
            self.norm: nn.Module = ScaleNorm(eps, affine)
        elif kind == "layernorm":
            self.norm = nn.LayerNorm(size, eps=eps, elementwise_affine=affine)
        elif kind == "rmsnorm":
            self.norm = MegaRMSNorm(size, affine)
        elif kind in ("batchnorm", "syncbatchnorm"):
            self.norm = nn.BatchNorm1d(size, eps=eps, affine=affine)
        else:
            raise ConfigError(f"normalization_type: expected one of {NORMALIZATION_TYPES}, found {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)

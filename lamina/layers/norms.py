"""Normalisation layers shared by the families."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and scaled after casting back (as Llama/Mistral do)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def make_norm(kind: str, size: int, eps: float, bias: bool = True) -> nn.Module:
    """`"rms"` or `"layer"` normalisation of the last dimension."""
    if kind == "rms":
        return RMSNorm(size, eps)
    return nn.LayerNorm(size, eps=eps, bias=bias)

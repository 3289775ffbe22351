"""Feed-forward blocks and the activations the families use."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .fused import expose_parts, project
from .linear import Linear


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (Persimmon)."""
    return torch.square(F.relu(x))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": relu2,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}

# a config field naming one of them (`hidden_act: Activation`), checked when the config is made
Activation = Literal[tuple(sorted(ACTIVATIONS))]


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation: expected one of {sorted(ACTIVATIONS)}, found {name!r}")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """act(x W_gate) * (x W_up) W_down, with gate and up fused into one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        expose_parts(self, "gate_up_proj", ["gate_proj", "up_proj"], [intermediate_size, intermediate_size])
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(self, "gate_up_proj", x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class PlainMLP(nn.Module):
    """act(x W_up + b) W_down + b (GPT-2, Persimmon)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))

"""MEGA's single-head attention: relative position biases, and attention within chunks.

With chunking, a sequence is cut into blocks of `chunk_size` tokens and each token attends only
to the keys of its own block, so time and memory grow linearly with the length. Positions for the
relative bias restart at every block. Without chunking the whole sequence is one block.

Two ways to run it, equal where they overlap:

- `blocked_attention`: a whole sequence starting at a block boundary, reshaped into
  `(batch, blocks, block, ·)`; a last partial block is padded inside and its padding masked.
- `cached_attention`: new queries against keys held by a cache plus the new keys, with the
  block, causal and padding rules written as predicates over absolute positions (decoding).

Scores are `softmax(q k / sqrt(z) + bias)`, or `act(q k / n + bias)` for the "laplace" and
"relu2" activations, where `n` counts the keys a query may see (its index in the block + 1 when
causal, the block's real keys otherwise), as transformers 4.x defines them. Like the reference,
softmax ignores the padding mask of a block made only of padding; a query with no key at all
(causal attention on left padding) gets zero weights instead of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .mlp import relu2


def laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    """MEGA's Laplace attention function: a Gaussian CDF, a bounded stand-in for relu²."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


ELEMENT_ACTIVATIONS = {"laplace": laplace, "relu2": relu2}
ATTENTION_ACTIVATIONS = ("softmax", *ELEMENT_ACTIVATIONS)


class SimpleRelativeBias(nn.Module):
    """A learned bias per offset `key - query`: `rel_pos_bias (2 * max_positions - 1,)`.

    The zero offset sits at index `span - 1`, where `span` is the chunk size when one is set and
    `max_positions` otherwise (the reference's indexing), and offsets reach at most `span - 1`.
    """

    def __init__(self, max_positions: int, chunk_size: int) -> None:
        super().__init__()
        self.span = chunk_size if chunk_size > 0 else max_positions
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * max_positions - 1))

    def forward(self, query_offsets: torch.Tensor, key_offsets: torch.Tensor) -> torch.Tensor:
        """In-block offsets `(q,)`, `(k,)` → bias `(q, k)`."""
        return self.rel_pos_bias[self.span - 1 + key_offsets[None, :] - query_offsets[:, None]]

    def check_length(self, length: int) -> None:
        if length > self.span:
            raise InputError(
                f"the simple relative positional bias covers {self.span} positions "
                f"(config.chunk_size if set, else config.max_positions); a block of {length} tokens is too long"
            )


class RotaryRelativeBias(nn.Module):
    """`rotate(alpha, i) · rotate(b_param, j)`: a bias that depends on `j - i` through sinusoidal
    rotations of two learned vectors `(1, dim)`; it extends to any length."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.empty(1, dim))
        self.b_param = nn.Parameter(torch.empty(1, dim))
        # MEGA checkpoints store this placeholder; kept so saved files match the reference's keys
        self.register_buffer("_float_tensor", torch.zeros(1))

    def reset_buffers(self) -> None:
        if self._float_tensor.is_meta:
            self._float_tensor = torch.zeros(1)

    def _rotate(self, vector: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        inv_freq = torch.exp(torch.arange(half, device=offsets.device).float() * -(math.log(10000) / half))
        angles = offsets.float()[:, None] * inv_freq[None, :]
        sin, cos = torch.sin(angles).to(vector.dtype), torch.cos(angles).to(vector.dtype)
        first, second = vector.chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

    def forward(self, query_offsets: torch.Tensor, key_offsets: torch.Tensor) -> torch.Tensor:
        """In-block offsets `(q,)`, `(k,)` → bias `(q, k)`."""
        return self._rotate(self.alpha, query_offsets) @ self._rotate(self.b_param, key_offsets).T

    def check_length(self, length: int) -> None:
        """Rotary biases have no length limit."""


RelativeBias = SimpleRelativeBias | RotaryRelativeBias


def _attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    bias: torch.Tensor,
    allowed: torch.Tensor,
    activation: str,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Weights `(…, q, k)` from `query (…, q, z)`, `key (…, k, z)`, `bias (q, k)` and the boolean
    `allowed (…, q, k)`; `lengths` (broadcastable to `(…, q, 1)`) divides element-wise scores."""
    if activation == "softmax":
        scores = torch.matmul(query * query.shape[-1] ** -0.5, key.transpose(-1, -2)) + bias
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return weights.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    scores = torch.matmul(query, key.transpose(-1, -2)) / lengths + bias
    return ELEMENT_ACTIVATIONS[activation](scores) * allowed


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    padding_mask: torch.Tensor | None,
    block_size: int | None,
    causal: bool,
    activation: str,
    relative_bias: RelativeBias,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention within blocks over a sequence that starts at a block boundary.

    `query`, `key (batch, seq, z)`, `value (batch, seq, v)`, `padding_mask (batch, seq)` (True:
    real token). A sequence no longer than one block is a single block of its own length.
    Returns the output `(batch, seq, v)` and the weights `(batch, blocks, block, block)`.
    """
    batch, length, _ = query.shape
    block = length if block_size is None or length <= block_size else block_size
    relative_bias.check_length(block)
    blocks = -(-length // block)
    pad = blocks * block - length
    real = torch.arange(blocks * block, device=query.device) < length
    if pad:
        query, key, value = (F.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    query, key, value = (t.reshape(batch, blocks, block, t.shape[-1]) for t in (query, key, value))
    valid = real.view(1, blocks, block)
    if padding_mask is not None:
        user = F.pad(padding_mask.bool(), (0, pad)).view(batch, blocks, block)
        if activation == "softmax":
            # the reference lets a block made only of padding attend to all of it
            user = user | ~user.any(-1, keepdim=True)
        valid = valid & user
    offsets = torch.arange(block, device=query.device)
    allowed = valid[:, :, None, :]
    if causal:
        allowed = allowed & (offsets[None, :] <= offsets[:, None])
        lengths = (offsets + 1).to(query.dtype)[:, None]
    else:
        lengths = valid.sum(-1).clamp(min=1).to(query.dtype)[..., None, None]
    weights = _attention_weights(query, key, relative_bias(offsets, offsets), allowed, activation, lengths)
    output = torch.matmul(F.dropout(weights, dropout, training=dropout > 0), value)
    return output.reshape(batch, blocks * block, -1)[:, :length], weights


def cached_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    start: int,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor,
    block_size: int | None,
    activation: str,
    relative_bias: RelativeBias,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of new queries over cached and new keys, by absolute position.

    `query (batch, q, z)` holds positions `start … start + q - 1`; `key (batch, k, z)`,
    `value (batch, k, v)` sit at `key_positions (k,)` (-1: an empty slot) with `key_valid
    (batch, k)`. A query sees the valid keys of its own block at or before its position.
    Returns `(batch, q, v)` and weights `(batch, 1, q, k)`.
    """
    end = start + query.shape[1]
    query_positions = torch.arange(start, end, device=query.device)
    written = key_positions >= 0
    if block_size is None:
        relative_bias.check_length(end)
        query_offsets, key_offsets = query_positions, key_positions.clamp(min=0)
        same_block = written[None, :]
    else:
        relative_bias.check_length(min(end, block_size))
        query_offsets, key_offsets = query_positions % block_size, key_positions.clamp(min=0) % block_size
        query_blocks = query_positions.div(block_size, rounding_mode="floor")
        same_block = written[None, :] & (key_positions.div(block_size, rounding_mode="floor")[None, :] == query_blocks[:, None])
    allowed = same_block & (key_positions[None, :] <= query_positions[:, None])
    allowed = allowed[None] & key_valid[:, None, :]
    lengths = (query_offsets + 1).to(query.dtype)[:, None]
    bias = relative_bias(query_offsets, key_offsets)
    weights = _attention_weights(query, key, bias, allowed, activation, lengths)
    output = torch.matmul(F.dropout(weights, dropout, training=dropout > 0), value)
    return output, weights[:, None]

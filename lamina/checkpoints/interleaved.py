"""Checkpoints whose q/k projections keep each head's rotary pairs interleaved: Meta's original
layout, which Mistral's consolidated files and llama.cpp's GGUF files share. lamina (like
transformers) rotates halves, so those rows are permuted when read (and back when written)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from ..errors import CheckpointError
from .io import release_mapped_pages


def unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Interleaved rows (per head: pair 0 at rows 0,1, pair 1 at rows 2,3, …) → rotate-half rows
    (per head: the first members of the pairs, then the second members)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `unpermute_rotary` (rotate-half layout → interleaved layout)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


class InterleavedRotaryTensors(Mapping[str, torch.Tensor]):
    """A checkpoint under HF names, read one tensor at a time: `sources` maps each HF name to what
    `read` needs to produce the stored tensor (in a given floating dtype, or as stored for None);
    q/k projections come out in rotate-half layout."""

    def __init__(
        self, sources: dict[str, Any], read: Callable[[Any, torch.dtype | None], torch.Tensor], config: dict[str, Any],
        description: str,
    ) -> None:
        self.description = description
        self._sources = sources
        self._read = read
        self._heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}

    def read(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """The tensor `key`, floating values in `dtype` (converted before the permutation, which
        copies: the stored pages are released once permuted)."""
        weight = self._read(self._sources[key], dtype)
        for projection, heads in self._heads.items():
            if key.endswith(f"self_attn.{projection}.weight"):
                if heads < 1 or weight.ndim == 0 or weight.shape[0] % (2 * heads):
                    raise CheckpointError(
                        f"{self.description}: {key} has {weight.shape[0] if weight.ndim else 0} rows, which "
                        f"{heads} heads of rotary pairs cannot share (expected a multiple of {2 * heads})")
                permuted = unpermute_rotary(weight, heads)
                release_mapped_pages(weight)
                weight = permuted
        return weight

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.read(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

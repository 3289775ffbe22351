"""Name maps: how a checkpoint's tensor names and layouts map onto lamina's parameters.

A name map is a list of rules. Each rule turns some checkpoint tensors into one lamina tensor
(`merge`) and back (`split`), so the same table loads and saves. Names no rule mentions pass
through unchanged, so a family lists only what differs: fused projections, transposes, stacked
experts, permuted heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Merge = Callable[[list[torch.Tensor]], torch.Tensor]
Split = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Rule:
    """`sources` (checkpoint names) ↔ `target` (a lamina parameter name)."""

    target: str
    sources: tuple[str, ...]
    merge: Merge
    split: Split


def rename(target: str, source: str) -> Rule:
    return Rule(target, (source,), lambda ts: ts[0], lambda t: [t])


def transpose(target: str, source: str) -> Rule:
    """GPT-2's Conv1D stores (in, out); lamina's Linear stores (out, in)."""
    return Rule(target, (source,), lambda ts: ts[0].t(), lambda t: [t.t()])


@dataclass(frozen=True)
class Concatenated:
    """`concat`'s merge: the parts joined along `dim`. A loader that needs only some rows of the
    result (a tensor-parallel rank) reads them from the parts (`lamina.distributed`)."""

    dim: int

    def __call__(self, ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(ts, dim=self.dim)


def concat(target: str, sources: Sequence[str], sizes: Sequence[int], dim: int = 0) -> Rule:
    """Several projections fused into one weight along `dim` (q/k/v, gate/up)."""
    sizes = list(sizes)
    return Rule(target, tuple(sources), Concatenated(dim), lambda t: list(torch.split(t, sizes, dim=dim)))


@dataclass(frozen=True)
class Stacked:
    """`stack`'s merge: one tensor per expert (`inner` first merges each expert's parts), stacked
    along a new first dimension; a loader can read only some experts (`lamina.distributed`)."""

    inner: Rule | None

    def group(self, ts: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """The sources of each expert."""
        per_expert = 1 if self.inner is None else len(self.inner.sources)
        return [ts[g : g + per_expert] for g in range(0, len(ts), per_expert)]

    def __call__(self, ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([parts[0] if self.inner is None else self.inner.merge(parts) for parts in self.group(ts)])


def stack(target: str, sources: Sequence[str], inner: Rule | None = None) -> Rule:
    """Per-expert tensors stacked into one (E, …) tensor; `inner` first merges each expert's parts."""
    if inner is None:
        return Rule(target, tuple(sources), Stacked(None), lambda t: list(t.unbind(0)))

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        return [part for expert in t.unbind(0) for part in inner.split(expert)]

    return Rule(target, tuple(sources), Stacked(inner), split)


def with_prefix(rules: Sequence[Rule], target_prefix: str, source_prefix: str) -> list[Rule]:
    """The same rules with a prefix on both sides (a base model's rules inside a task model)."""
    return [
        Rule(target_prefix + r.target, tuple(source_prefix + s for s in r.sources), r.merge, r.split) for r in rules
    ]

"""The checkpoint's separate projections inside lamina's fused ones, as layers of their own.

lamina fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (one product instead of three or
two). Tools that find layers by the names users know, above all peft's `target_modules=["q_proj",
"v_proj", …]`, look for `q_proj`, `gate_proj` and the like. `expose_parts` registers each part
under that name beside the fused layer as a `FusedPart`: an `nn.Linear` holding no parameters of
its own, whose weight and bias are views of the fused layer's rows. The state dict, the checkpoint
names and the fused fast path do not change.

```
self_attn ── qkv_proj  (weight: q rows | k rows | v rows)
          ├─ q_proj ─┐
          ├─ k_proj ─┼─ FusedParts: views of qkv_proj's rows
          └─ v_proj ─┘
```

The owner's forward calls `project(owner, "qkv_proj", x)`: while every part is still its
`FusedPart` this is the fused layer's product; once a tool has wrapped a part (a LoRA layer around
`q_proj`), it is the concatenation of the parts' outputs, each through its wrapper, so an adapter on
`q_proj` acts on q's rows only, as on the checkpoint's separate layer. A merged adapter
(`merge_and_unload`) is added into the views, which is to say into the fused weight, and the fused
product runs again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedPart(nn.Linear):
    """Rows `start:stop` of `owner.<fused_name>` as a linear layer `(…, in) → (…, stop - start)`.

    A float fused layer's part multiplies by its rows only; a quantized one's runs the fused product
    and keeps its rows (the packed weight has no row views)."""

    def __init__(self, owner: nn.Module, fused_name: str, start: int, stop: int, in_features: int) -> None:
        nn.Module.__init__(self)
        self.__dict__["owner"] = owner  # not a submodule: the part belongs to the owner, not the reverse
        self.fused_name, self.start, self.stop = fused_name, start, stop
        self.in_features, self.out_features = in_features, stop - start

    @property
    def fused(self) -> nn.Module:
        return getattr(self.owner, self.fused_name)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """`(out, in)`: a view of the fused weight, so in-place changes (merging an adapter) reach it."""
        weight = getattr(self.fused, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return self.fused.dequantize()[self.start:self.stop]
        return weight[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        bias = getattr(self.fused, "bias", None)
        return None if bias is None else bias[self.start:self.stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if isinstance(fused, nn.Linear):
            return F.linear(x, self.weight, self.bias)
        return fused(x)[..., self.start:self.stop]


def expose_parts(owner: nn.Module, fused_name: str, part_names: list[str], sizes: list[int]) -> None:
    """Register `part_names` on `owner`, each a `FusedPart` of `sizes[i]` consecutive rows of
    `owner.<fused_name>` (in order)."""
    fused = getattr(owner, fused_name)
    parts = owner.__dict__.setdefault("fused_parts", {})
    parts[fused_name] = tuple(part_names)
    start = 0
    for name, size in zip(part_names, sizes):
        setattr(owner, name, FusedPart(owner, fused_name, start, start + size, fused.in_features))
        start += size


def project(owner: nn.Module, fused_name: str, x: torch.Tensor) -> torch.Tensor:
    """`owner.<fused_name>(x)`, or the concatenated outputs of its parts once one is wrapped."""
    parts = [owner._modules[name] for name in owner.fused_parts[fused_name]]
    if all(type(part) is FusedPart for part in parts):
        return getattr(owner, fused_name)(x)
    return torch.cat([part(x) for part in parts], dim=-1)

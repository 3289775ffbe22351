"""Quantized mixture-of-experts weights (Mixtral's stacked experts).

Every method quantizes a weight row by row (a scale per output channel, or groups of inputs within
a row), so each stacked projection `(experts, out, in)` is quantized as one layer over all the
experts' rows, `(experts · out, in)`: the codes are those of quantizing each expert alone, and
expert e owns rows `[e · out, (e + 1) · out)`. Each expert's slice is a view of those rows, with
its own packed kernel operands, run on the tokens routed to it. Where lamina's CPU kernels run the
layers (int8, int4), their expert variants take each row's expert index instead, so that a decode
step picks its experts without the host and compiles whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import kernels
from ..layers.mlp import activation
from ..layers.moe import GATHER_LIMIT, Experts, combine, grouped
from .linear import QuantizedLinear, new_layer


class QuantizedExperts(nn.Module):
    """`gate_up_proj` (in: hidden, out: experts × 2 · intermediate) and `down_proj` (in:
    intermediate, out: experts × hidden), two quantized layers (`quantized_rows`). `forward` as
    `Experts`'."""

    def __init__(self, num_experts: int, gate_up_proj: QuantizedLinear, down_proj: QuantizedLinear, act: str) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj, self.down_proj = gate_up_proj, down_proj
        self.act_name = act
        self.act = activation(act)
        self._experts: list[tuple[QuantizedLinear, QuantizedLinear]] = []
        # lamina's expert kernel for each of the two layers, where they run them
        self._routed: list[tuple[Callable[..., torch.Tensor], QuantizedLinear]] | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_experts())
        self.refresh_experts()

    @classmethod
    def quantized(cls, experts: Experts, method: str, compute_dtype: torch.dtype | None, group_size: int,
                  release=None) -> QuantizedExperts:
        """`experts`' weights quantized (empty layers for a model on the meta device, which its load
        fills); `release` as in `QuantizedLinear.set_weight`."""
        layers = [quantized_rows(weights, method, compute_dtype, group_size, release)
                  for weights in (experts.gate_up_proj, experts.down_proj)]
        return cls(experts.gate_up_proj.shape[0], *layers, experts.act_name)

    def refresh_experts(self) -> None:
        """Each expert's two layers as views of the stacked rows (after the weights were set, loaded
        or moved), their packed operands derived."""
        self._experts, self._routed = [], None
        if self.gate_up_proj.weight.is_meta:
            return
        self._experts = [(_rows(self.gate_up_proj, e, self.num_experts), _rows(self.down_proj, e, self.num_experts))
                         for e in range(self.num_experts)]
        ops = kernels.loaded()
        layers = (self.gate_up_proj, self.down_proj)
        if ops is not None and all(layer._packed is not None for layer in layers):
            routed = {ops.int8_linear: ops.int8_expert_linear, ops.int4_linear: ops.int4_expert_linear}
            if all(layer._packed[0] in routed for layer in layers):
                self._routed = [(routed[layer._packed[0]], layer) for layer in layers]

    @property
    def host_dispatch(self) -> bool:
        """Whether each expert's rows are chosen on the host, so that a decode step over them does
        not trace whole: unless lamina's kernels take the expert indices (int8, int4 on the CPU)."""
        return self._routed is None

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.refresh_experts()
        return self

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._experts[index]
        gate, up = gate_up(x).chunk(2, dim=-1)
        return down(self.act(gate) * up)

    def gathered(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """`x (pairs, H)` each through its own expert `expert_ids (pairs,)`, the experts' rows picked
        inside lamina's kernels: no host synchronisation, the results of `grouped` exactly (the
        kernels quantize each row's activations alone)."""
        gate, up = self._routed_product(0, x, expert_ids).chunk(2, dim=-1)
        return self._routed_product(1, self.act(gate) * up, expert_ids)

    def _routed_product(self, which: int, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        kernel, layer = self._routed[which]
        _, operands = layer._packed
        out = kernel(x.contiguous(), *operands, expert_ids.contiguous(), layer.out_features // self.num_experts)
        # QuantizedLinear's roundings: the compute dtype, then the caller's
        return out.to(layer.compute_dtype or x.dtype).to(x.dtype)

    def forward(self, x: torch.Tensor, top_index: torch.Tensor, top_weight: torch.Tensor) -> torch.Tensor:
        """`x (tokens, H)`, `top_index/top_weight (tokens, k)` → weighted sum of expert outputs: the
        pairs through lamina's expert kernels when few (decoding) or under `torch.compile`, else
        grouped by expert."""
        if self._routed is not None and (top_index.numel() <= GATHER_LIMIT or torch.compiler.is_compiling()):
            return combine(self.gathered, x, top_index, top_weight)
        return combine(lambda rows, ids: grouped(self.expert, self.num_experts, rows, ids), x, top_index, top_weight)


def quantized_rows(weights: torch.Tensor, method: str, compute_dtype: torch.dtype | None, group_size: int,
                   release=None) -> QuantizedLinear:
    """Stacked expert weights `(experts, out, in)` as one quantized layer over their rows; weights
    on the meta device give an empty layer, for a checkpoint to fill."""
    count, out_features, in_features = weights.shape
    # quantizing replaces every tensor (and a meta model's load assigns them): no placeholders
    layer = new_layer(method, in_features, count * out_features, group_size, bias=False, compute_dtype=compute_dtype,
                      device="meta")
    if not weights.is_meta:
        with torch.no_grad():
            layer.set_weight(weights.detach().reshape(-1, in_features), release)
    return layer


def _rows(layer: QuantizedLinear, index: int, count: int) -> QuantizedLinear:
    """Expert `index` of `count` in a layer whose rows are the experts' rows in turn: a layer of the
    same kind over a view of its rows."""
    rows = layer.out_features // count
    part = new_layer(layer.method, layer.in_features, rows, getattr(layer, "group_size", 0), bias=False,
                     compute_dtype=layer.compute_dtype, device="meta")
    for name, tensor in layer.named_parameters(recurse=False):
        if name != "bias":
            setattr(part, name, nn.Parameter(tensor[index * rows : (index + 1) * rows], requires_grad=False))
    part.refresh_packed()
    return part

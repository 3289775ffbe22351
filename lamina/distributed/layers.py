"""The parallel layers a plan swaps in: same parameter names as the layers they replace, so
checkpoints load onto them, each holding only this rank's part of the weights.

A split linear layer is a split (`ColumnParallel`, `RowParallelQuantized` / `RowParallelLinear`,
`VocabParallel`) over a whole layer's class: lamina's `Linear` or a quantized layer, so a split
layer quantized as it loads (`quantization.apply`, through `quantized_form`) keeps its split."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..layers.linear import Linear
from ..layers.moe import GATHER_LIMIT, Experts, combine
from ..quantization.linear import Int4Linear, Int8Linear, NF4Linear, quantize_int8
from .collectives import all_reduce_max, all_to_all, copy_to, exchange_counts, gather_last, gather_rows, reduce_from, scatter_rows
from .runtime import Groups


class Split:
    """Base of the split layers: `group` holds the ranks sharing the layer, the other arguments
    are the whole layer's class's (a `Linear` or a quantized layer) with this rank's sizes."""

    def __init__(self, *args: Any, group: dist.ProcessGroup | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class ColumnParallel(Split):
    """This rank's output features (heads, intermediate rows) of a linear layer: `(…, in)` →
    `(…, local out)`. A quantized layer's rows come whole with their scales."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(copy_to(x, self.group))


class RowParallelQuantized(Split):
    """This rank's input features of a quantized layer, cut at its groups (`input_block`):
    `(…, local in)` → `(…, out)`, the ranks' products summed (one all-reduce), then the bias,
    which every rank holds whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reduce_from(self.product(x), self.group)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype)


class VocabParallel(Split):
    """Rows `[start, start + rows)` of an output projection over the vocabulary (`start` = rank ×
    rows): `(…, hidden)` → the whole `(…, vocab)` logits, gathered from the ranks (padding rows
    dropped); with `gather` off, this rank's `(…, rows)` (`TensorParallel.vocabulary_shards`)."""

    def __init__(self, *args: Any, vocab_size: int, start: int, group: dist.ProcessGroup | None, **kwargs: Any) -> None:
        super().__init__(*args, group=group, **kwargs)
        self.vocab_size, self.start = vocab_size, start
        self.gather = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = super().forward(copy_to(x, self.group))
        return gather_last(local, self.group)[..., : self.vocab_size] if self.gather else local

    def greedy(self, local: torch.Tensor) -> torch.Tensor:
        """Each row's largest logit's token id (the first of ties, as `max` picks) from every rank's
        `local (batch, rows)` logits: one all-gather of a value and an id a row, not of the logits."""
        values, ids = local[..., : max(0, self.vocab_size - self.start)].max(dim=-1)  # (batch,), padding left out
        pairs = torch.stack((values.double(), (ids + self.start).double()), dim=-1)  # ids exact in float64
        every = gather_rows(pairs[None], self.group)  # (ranks, batch, 2), ranks in vocabulary order
        best = every[..., 0].max(dim=0).indices  # the first rank holding the row's largest
        return every[..., 1].gather(0, best[None])[0].long()


class ColumnParallelInt8Linear(ColumnParallel, Int8Linear):
    """`Int8Linear`'s rows of this rank."""


class ColumnParallelInt4Linear(ColumnParallel, Int4Linear):
    """`Int4Linear`'s rows of this rank."""


class ColumnParallelNF4Linear(ColumnParallel, NF4Linear):
    """`NF4Linear`'s rows of this rank."""


class RowParallelInt8Linear(RowParallelQuantized, Int8Linear):
    """`Int8Linear`'s input columns of this rank (its per-row scales whole)."""

    def _quantize_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        # a row's scale is its largest magnitude over every rank's columns, as for the whole row
        absmax = all_reduce_max(rows.float().abs().amax(dim=1), self.group)
        codes, scale = quantize_int8(rows, absmax)
        return {"weight": codes, "weight_scale": scale}


class RowParallelInt4Linear(RowParallelQuantized, Int4Linear):
    """`Int4Linear`'s groups of input columns of this rank."""


class RowParallelNF4Linear(RowParallelQuantized, NF4Linear):
    """`NF4Linear`'s blocks of input columns of this rank."""


class VocabParallelInt8Head(VocabParallel, Int8Linear):
    """`Int8Linear`'s vocabulary rows of this rank."""


class VocabParallelInt4Head(VocabParallel, Int4Linear):
    """`Int4Linear`'s vocabulary rows of this rank."""


class VocabParallelNF4Head(VocabParallel, NF4Linear):
    """`NF4Linear`'s vocabulary rows of this rank."""


COLUMN_FORMS = {"int8": ColumnParallelInt8Linear, "int4": ColumnParallelInt4Linear, "nf4": ColumnParallelNF4Linear}
ROW_FORMS = {"int8": RowParallelInt8Linear, "int4": RowParallelInt4Linear, "nf4": RowParallelNF4Linear}
VOCAB_FORMS = {"int8": VocabParallelInt8Head, "int4": VocabParallelInt4Head, "nf4": VocabParallelNF4Head}


class ColumnParallelLinear(ColumnParallel, Linear):
    """A `Linear`'s rows of this rank."""

    def quantized_form(self) -> dict[str, Any]:
        """`quantization.new_layer`'s arguments for this layer quantized (`quantization.apply`)."""
        return {"layers": COLUMN_FORMS, "group": self.group}


class RowParallelLinear(Split, Linear):
    """A `Linear`'s input features of this rank: `(…, local in)` → `(…, out)` summed over the
    ranks (one all-reduce), then the bias, which every rank holds whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reduce_from(F.linear(x, self.weight), self.group)
        return out if self.bias is None else out + self.bias

    def quantized_form(self) -> dict[str, Any]:
        """As `ColumnParallelLinear.quantized_form`."""
        return {"layers": ROW_FORMS, "group": self.group}


class VocabParallelEmbedding(nn.Embedding):
    """Rows `[start, start + rows)` of the vocabulary: `ids (…)` → `(…, dim)`, each id looked up
    by the rank holding it (the others contribute zeros) and summed over the ranks."""

    def __init__(self, rows: int, dim: int, start: int, padding_idx: int | None, group: dist.ProcessGroup) -> None:
        local_padding = padding_idx - start if padding_idx is not None and start <= padding_idx < start + rows else None
        super().__init__(rows, dim, padding_idx=local_padding)
        self.start, self.group = start, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        found = F.embedding(local.masked_fill(outside, 0), self.weight, self.padding_idx)
        return reduce_from(found.masked_fill(outside[..., None], 0.0), self.group)


class VocabParallelHead(VocabParallel, Linear):
    """A `Linear` output layer's vocabulary rows of this rank."""

    def quantized_form(self) -> dict[str, Any]:
        """As `ColumnParallelLinear.quantized_form`."""
        return {"layers": VOCAB_FORMS, "group": self.group, "vocab_size": self.vocab_size, "start": self.start}


class ParallelExperts(Experts):
    """Mixtral's experts split over ranks: each of the `ep` ranks holds `E / ep` whole experts, and
    within it each `tp` rank a slice of every expert's intermediate rows.

    `forward(x (tokens, H), top_index, top_weight (tokens, k))` → `(tokens, H)`, as `Experts`. The
    (token, expert) pairs are shared out evenly over the `ep` ranks; each sends its pairs to the
    ranks owning their experts (all-to-all), runs its own experts on the pairs it receives (the `tp`
    ranks' partial outputs summed), sends the outputs back (all-to-all), and the ranks' pair outputs
    are gathered, so every rank weighs and sums all of them as one process would.
    """

    host_dispatch = True  # pairs per expert and per rank are counted on the host

    def __init__(self, local_experts: int, hidden_size: int, local_intermediate: int, act: str, groups: Groups) -> None:
        super().__init__(local_experts, hidden_size, local_intermediate, act)
        self.groups = groups
        self.first_expert = groups.ep_rank * local_experts

    def forward(self, x: torch.Tensor, top_index: torch.Tensor, top_weight: torch.Tensor) -> torch.Tensor:
        return combine(self._pairs, x, top_index, top_weight)

    def _pairs(self, pair_x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """`pair_x (pairs, H)` each through its expert `expert_ids (pairs,)`, wherever it lives."""
        group, ranks = self.groups.ep, self.groups.ep_size
        if ranks == 1:
            return self._local(pair_x, expert_ids)
        pairs = pair_x.shape[0]
        share = -(-pairs // ranks)
        padding = share * ranks - pairs  # padded pairs go to expert 0 and are dropped at the end
        pair_x, expert_ids = F.pad(pair_x, (0, 0, 0, padding)), F.pad(expert_ids, (0, padding))
        mine = scatter_rows(pair_x, group)  # (share, H)
        my_ids = expert_ids[self.groups.ep_rank * share : (self.groups.ep_rank + 1) * share]
        owner = torch.div(my_ids, self.gate_up_proj.shape[0], rounding_mode="floor")
        order = torch.argsort(owner, stable=True)
        sent = torch.bincount(owner, minlength=ranks)
        send_counts, receive_counts = sent.tolist(), exchange_counts(sent, group).tolist()
        received = all_to_all(mine[order], send_counts, receive_counts, group)
        received_ids = all_to_all(my_ids[order], send_counts, receive_counts, group)
        out = self._local(received, received_ids - self.first_expert)
        back = all_to_all(out, receive_counts, send_counts, group)  # in `order`
        return gather_rows(back[torch.argsort(order)], group)[:pairs]

    def _local(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Pairs through this rank's experts, the `tp` ranks' slices of each summed."""
        tp = self.groups.tp
        run = self.gathered if expert_ids.numel() <= GATHER_LIMIT else self.grouped
        return reduce_from(run(copy_to(x, tp), expert_ids), tp)

"""The parallel layers a plan swaps in: same parameter names as the layers they replace, so
checkpoints load onto them, each holding only this rank's part of the weights."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..layers.linear import Linear
from ..layers.moe import GATHER_LIMIT, Experts, combine
from .collectives import all_to_all, copy_to, exchange_counts, gather_last, gather_rows, reduce_from, scatter_rows
from .runtime import Groups


class ColumnParallelLinear(Linear):
    """This rank's output features (heads, intermediate rows) of a `Linear`: `(…, in)` → `(…, local out)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: dist.ProcessGroup) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(copy_to(x, self.group))


class RowParallelLinear(Linear):
    """This rank's input features of a `Linear`: `(…, local in)` → `(…, out)` summed over the
    ranks (one all-reduce), then the bias, which every rank holds whole."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: dist.ProcessGroup) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reduce_from(F.linear(x, self.weight), self.group)
        return out if self.bias is None else out + self.bias


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


class VocabParallelHead(Linear):
    """Rows `[rank × rows, (rank + 1) × rows)` of an output projection over the vocabulary:
    `(…, hidden)` → the whole `(…, vocab)` logits, gathered from the ranks (padding rows dropped)."""

    def __init__(self, in_features: int, rows: int, vocab_size: int, bias: bool, group: dist.ProcessGroup) -> None:
        super().__init__(in_features, rows, bias=bias)
        self.vocab_size, self.group = vocab_size, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_last(super().forward(copy_to(x, self.group)), self.group)[..., : self.vocab_size]


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

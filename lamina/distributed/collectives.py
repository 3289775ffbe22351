"""The four collectives tensor and expert parallelism are made of, with the gradients that keep
every rank's parameters exact (Megatron-LM's conjugate pairs).

Activations outside the parallel regions are replicated: every rank of a group holds the same
tensor and computes the same loss from it, so a gradient arriving there is already whole.

- `copy_to(x)`: enters a parallel region (identity); backward sums the ranks' partial gradients.
- `reduce_from(x)`: leaves a row-parallel product (sum over the ranks); backward is the identity.
- `gather_last(x)` / `scatter_rows(x)`: a column-parallel output concatenated over the ranks
  (backward: this rank's slice), and the converse: this rank's rows (backward: all of them).
- `all_to_all(x, …)`: rows to the ranks that own them (expert parallelism); backward sends the
  gradients back the same way.

They run c10d's collectives in place (`torch.distributed.all_reduce`, …): on gloo these take
half the time of the functional collectives' (bench/RESULTS.md). Without autograd (decoding) the
sum is taken in place, with no copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.autograd import Function


def _size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def _all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """`(rows, …)` from each rank → `(ranks × rows, …)` in rank order."""
    out = x.new_empty((_size(group) * x.shape[0], *x.shape[1:]))
    dist.all_gather_single(out, x.contiguous(), group=group)
    return out


def _own_rows(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    rows = x.shape[0] // _size(group)
    start = dist.get_rank(group) * rows
    return x[start : start + rows]


def _needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class _CopyTo(Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group), None


class _ReduceFrom(Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherLast(Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.width = group, x.shape[-1]
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        start = dist.get_rank(ctx.group) * ctx.width
        return grad[..., start : start + ctx.width].contiguous(), None


class _ScatterRows(Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _own_rows(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_rows(grad, ctx.group), None


class _GatherRows(Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_rows(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _own_rows(grad, ctx.group).contiguous(), None


class _AllToAll(Function):
    @staticmethod
    def forward(ctx, x, send_counts, receive_counts, group):
        ctx.counts, ctx.group = (send_counts, receive_counts), group
        return _exchange(x, send_counts, receive_counts, group)

    @staticmethod
    def backward(ctx, grad):
        send_counts, receive_counts = ctx.counts
        return _exchange(grad, receive_counts, send_counts, ctx.group), None, None, None


def _gather_last(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """`(…, width)` from each rank → `(…, ranks × width)` in rank order."""
    ranks, width = _size(group), x.shape[-1]
    stacked = _all_gather_rows(x[None], group)  # (ranks, …, width)
    return stacked.movedim(0, -2).reshape(*x.shape[:-1], ranks * width)


def _exchange(x: torch.Tensor, send_counts: list[int], receive_counts: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    out = x.new_empty((sum(receive_counts), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), receive_counts, send_counts, group=group)
    return out


def _apply(function: type[Function], plain: Callable[..., torch.Tensor], x: torch.Tensor,
           group: dist.ProcessGroup | None) -> torch.Tensor:
    """`function` where gradients flow, `plain` (its forward) where none do; nothing for one rank."""
    if _size(group) == 1:
        return x
    return function.apply(x, group) if _needs_grad(x) else plain(x, group)


def copy_to(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Identity; backward: the sum of the group's gradients."""
    return _apply(_CopyTo, lambda x, group: x, x, group)


def reduce_from(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The sum of `x` over the group (in place when no gradient flows); backward: the identity."""
    return _apply(_ReduceFrom, _all_reduce, x, group)


def gather_last(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`(…, width)` on each rank → `(…, ranks × width)`; backward: this rank's columns."""
    return _apply(_GatherLast, _gather_last, x, group)


def scatter_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """This rank's equal share of the rows of a replicated `(ranks × rows, …)`; backward: all rows' gradients."""
    return _apply(_ScatterRows, _own_rows, x, group)


def gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `(rows, …)` → `(ranks × rows, …)`; backward: this rank's rows."""
    return _apply(_GatherRows, _all_gather_rows, x, group)


def all_to_all(x: torch.Tensor, send_counts: list[int], receive_counts: list[int],
               group: dist.ProcessGroup | None) -> torch.Tensor:
    """Rows of `x (sum(send_counts), …)` to the ranks in order (`send_counts[i]` rows to rank i);
    returns the `sum(receive_counts)` rows received, in rank order."""
    if _size(group) == 1:
        return x
    if _needs_grad(x):
        return _AllToAll.apply(x, send_counts, receive_counts, group)
    return _exchange(x, send_counts, receive_counts, group)


def exchange_counts(send_counts: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """How many rows each rank will send this one, given how many this one sends each `(ranks,)`."""
    if _size(group) == 1:
        return send_counts
    received = torch.empty_like(send_counts)
    dist.all_to_all_single(received, send_counts.contiguous(), group=group)
    return received


def all_reduce_max(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The elementwise largest `x` over the group (no gradient: quantization scales)."""
    if _size(group) > 1:
        x = x.contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    return x

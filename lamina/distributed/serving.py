"""`lamina serve --tp N`: rank 0 serves HTTP and runs the engine; the other ranks run each of its
model calls in lockstep.

The engine calls the model once a step (`Engine._run_batch`: the rows' tokens, positions and KV
blocks). Split over ranks, rank 0's engine (`LockstepEngine`) first broadcasts that call; every
other rank (`follow`) runs the same call on its own block pool, whose blocks hold its share of the
key/value heads under the same block ids, so the collectives inside the model meet. The scheduler,
sampling and HTTP stay on rank 0: the others only ever see the batches it chose.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from ..serving.engine import Engine
from .launch import first_rank, quiet_other_ranks
from .runtime import ensure_process_group

# the other ranks wait for rank 0's next step as long as the server runs, however idle
FOLLOW_TIMEOUT = timedelta(days=365)
Call = tuple[list[Any], torch.Tensor, torch.Tensor]  # the rows' blocks, tokens (rows, new), positions (rows, new)


def step_group() -> dist.ProcessGroup:
    """The gloo group rank 0's steps travel in, without the collectives' usual timeout; every rank
    creates it, before anything else creates groups (the load's DeviceMesh)."""
    return dist.new_group(backend="gloo", timeout=FOLLOW_TIMEOUT)


def _share(call: Call | None, group: dist.ProcessGroup) -> Call | None:
    """Rank 0's `call` (None: the server stopped) on every rank."""
    box = [call]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


class LockstepEngine(Engine):
    """Rank 0's engine: each model call goes to the other ranks before it runs here; stopping
    tells them to return. `group`: `step_group()`'s."""

    def __init__(self, model: Any, group: dist.ProcessGroup, **options: Any) -> None:
        super().__init__(model, **options)
        self.group = group

    def stop(self) -> None:
        super().stop()
        _share(None, self.group)

    def _run_batch(self, rows: list[Any], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        _share(([row.blocks for row in rows], tokens, positions), self.group)
        return super()._run_batch(rows, tokens, positions)


def follow(model: Any, group: dist.ProcessGroup, **options: Any) -> None:
    """A rank after the first: run rank 0's model calls on this rank's block pool (an engine of the
    same `options`, never started) until its engine stops."""
    engine = Engine(model, **options)
    while (call := _share(None, group)) is not None:
        blocks, tokens, positions = call
        engine._run_batch([SimpleNamespace(blocks=row) for row in blocks], tokens, positions)


def split_serving(load: Callable[[], Any], options: dict[str, Any]) -> Callable[..., Engine] | None:
    """One rank of `lamina serve --tp N`: every rank makes the step group; a rank after the first
    loads the model (`load()`), follows rank 0's engine with `options` until it stops and returns
    None; rank 0 gets the engine class to serve with."""
    quiet_other_ranks()
    ensure_process_group()
    group = step_group()
    if first_rank():
        return functools.partial(LockstepEngine, group=group)
    # a stop reaches every rank; rank 0 drains its requests, then releases the others
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_IGN)
    follow(load(), group, **options)
    dist.destroy_process_group()
    return None

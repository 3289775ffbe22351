"""A greedy pick over the ranks' vocabulary shares (`VocabParallel.greedy`) is `max`'s over the
whole row: the first of tied ids across ranks, and never a padding row of the last share."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lamina.distributed.layers import VocabParallelHead
from tests.distributed.harness import free_port

VOCAB, ROWS = 5, 3  # two ranks: ids [0, 3) and [3, 5) plus a padding row
LOGITS = torch.tensor([
    [1.0, 3.0, 2.0, 3.0, 0.0],  # tied across the ranks: the lower id
    [0.0, 0.0, 0.0, 5.0, 5.0],  # tied within the second rank
    [-1.0, -2.0, -3.0, -4.0, -5.0],  # the padding row's zero would win if it were read
])


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo")
    head = VocabParallelHead(4, ROWS, False, group=dist.group.WORLD, vocab_size=VOCAB, start=rank * ROWS)
    local = torch.zeros(LOGITS.shape[0], ROWS)
    mine = LOGITS[:, rank * ROWS : (rank + 1) * ROWS]
    local[:, : mine.shape[1]] = mine
    torch.save(head.greedy(local), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_greedy_over_shares_picks_what_max_picks_over_the_row(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt").tolist() == LOGITS.max(dim=-1).indices.tolist() == [1, 3, 0]

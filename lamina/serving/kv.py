"""The server's key/value memory: fixed-size blocks in a pool, a block table per sequence.

Layers are grouped by what they see (`None`: full attention, an int: a sliding window); each group
has its own pool of `num_blocks` blocks of `block_size` token slots, one key and one value tensor
`(num_blocks * block_size, kv_heads, head_dim)` per layer, and its own free list. A sequence holds,
per group, the list of its blocks in order (its table) and the logical index of the first one: a
full-attention group keeps every block from position 0; a sliding group gives back a block once
every position in it has left the window of the next query. Nothing is reallocated per request.

One forward call over a batch of sequences (each row at its own positions) goes through a
`BatchCache`: it plans, once per group, where each new token is written (a flat slot) and which
slots each row reads, with the absolute position of each slot (-1 for padding), then serves the
model's layers through the layer-cache protocol of `lamina.cache` (`update(key, value,
cache_position)` → keys, values and key positions, here per row). Worked example, block size 4,
window 6: a row at position 9 holds logical blocks 1 (positions 4..7) and 2 (8..11); block 0 went
back to the pool once the query at position 8 no longer saw position 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError


@dataclass
class SequenceBlocks:
    """One sequence's tables: per group, its blocks in order and the logical index of the first."""

    tables: dict[int | None, list[int]] = field(default_factory=dict)
    first: dict[int | None, int] = field(default_factory=dict)


class BlockPool:
    """Key/value blocks for every layer of a decoder (module docstring)."""

    def __init__(self, layer_windows: list[int | None], kv_heads: int, head_dim: int, block_size: int,
                 num_blocks: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if block_size < 1 or num_blocks < 1:
            raise InputError(f"block pool: expected a positive block size and block count, found {block_size} "
                             f"and {num_blocks}")
        self.layer_windows = list(layer_windows)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.groups = list(dict.fromkeys(self.layer_windows))
        slots = num_blocks * block_size
        self.keys = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in layer_windows]
        self.values = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in layer_windows]
        self.free: dict[int | None, list[int]] = {group: list(range(num_blocks - 1, -1, -1)) for group in self.groups}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def used_blocks(self) -> int:
        """Blocks held by sequences, over all groups."""
        return sum(self.num_blocks - len(free) for free in self.free.values())

    def capacity(self) -> int:
        return self.num_blocks * len(self.groups)

    def _kept_from(self, group: int | None, next_position: int) -> int:
        """The first logical block a query at `next_position` (or later) can still see."""
        return 0 if group is None else max(0, next_position - group + 1) // self.block_size

    def blocks_needed(self, blocks: SequenceBlocks, first_position: int, end: int) -> dict[int | None, int]:
        """New blocks each group needs to write positions `first_position..end-1` (after releasing
        what the first of them no longer sees)."""
        needed = {}
        for group in self.groups:
            first = max(blocks.first.get(group, 0), self._kept_from(group, first_position))
            held_end = blocks.first.get(group, 0) + len(blocks.tables.get(group, []))
            needed[group] = max(0, -(-end // self.block_size) - max(held_end, first))
        return needed

    def can_allocate(self, needed: dict[int | None, int]) -> bool:
        return all(len(self.free[group]) >= count for group, count in needed.items())

    def extend(self, blocks: SequenceBlocks, first_position: int, end: int) -> bool:
        """Make room for positions `first_position..end-1`: release sliding blocks the first of them
        no longer sees, then take new blocks. False (and nothing taken) when the pool is short."""
        self.release_outside_window(blocks, first_position)
        needed = self.blocks_needed(blocks, first_position, end)
        if not self.can_allocate(needed):
            return False
        for group, count in needed.items():
            table = blocks.tables.setdefault(group, [])
            blocks.first.setdefault(group, self._kept_from(group, first_position))
            table.extend(self.free[group].pop() for _ in range(count))
        return True

    def release_outside_window(self, blocks: SequenceBlocks, next_position: int) -> None:
        """Give back each sliding group's blocks that no query from `next_position` on can see."""
        for group, table in blocks.tables.items():
            kept = self._kept_from(group, next_position)
            drop = min(len(table), kept - blocks.first[group])
            if drop > 0:
                self.free[group].extend(reversed(table[:drop]))
                del table[:drop]
                blocks.first[group] += drop
            if not table:  # nothing held: the next block written is the first one a query still sees
                blocks.first[group] = max(blocks.first[group], kept)

    def release(self, blocks: SequenceBlocks) -> None:
        """Give back every block of a finished, cancelled or preempted sequence."""
        for group, table in blocks.tables.items():
            self.free[group].extend(reversed(table))
        blocks.tables.clear()
        blocks.first.clear()


class _GroupPlan:
    """Where one group's layers write and read for one batch: `write (rows * new,)` flat slots,
    `read (rows * slots,)` flat slots and `key_positions (rows, slots)` (-1: padding)."""

    def __init__(self, pool: BlockPool, group: int | None, rows: list[SequenceBlocks], positions: torch.Tensor) -> None:
        size = pool.block_size
        longest = max(len(blocks.tables[group]) for blocks in rows)
        write, read, key_positions = [], [], []
        offsets = torch.arange(size)
        for blocks, row_positions in zip(rows, positions.tolist()):
            table, first = blocks.tables[group], blocks.first[group]
            write.extend(table[p // size - first] * size + p % size for p in row_positions)
            padded = table + [0] * (longest - len(table))
            starts = torch.tensor(padded)[:, None] * size
            read.append((starts + offsets).reshape(-1))
            logical = torch.arange(first, first + longest)[:, None] * size + offsets
            logical[len(table):] = -1
            key_positions.append(logical.reshape(-1))
        self.write = torch.tensor(write, device=pool.keys[0].device)
        self.read = torch.cat(read).to(pool.keys[0].device)
        self.key_positions = torch.stack(key_positions).to(pool.keys[0].device)


class _LayerView:
    """One layer's part of a `BatchCache`, in `lamina.cache`'s layer-cache protocol."""

    def __init__(self, pool: BlockPool, layer: int, plan: _GroupPlan) -> None:
        self.pool, self.layer, self.plan = pool, layer, plan

    def update(self, key: torch.Tensor, value: torch.Tensor,
               cache_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`key/value (rows, kv_heads, new, head_dim)` are written to the rows' blocks; returns every
        slot each row holds, `(rows, kv_heads, slots, head_dim)`, and their positions `(rows, slots)`."""
        rows, kv_heads, _, head_dim = key.shape
        keys, values = self.pool.keys[self.layer], self.pool.values[self.layer]
        keys.index_copy_(0, self.plan.write, key.transpose(1, 2).reshape(-1, kv_heads, head_dim).to(keys.dtype))
        values.index_copy_(0, self.plan.write, value.transpose(1, 2).reshape(-1, kv_heads, head_dim).to(values.dtype))
        slots = self.plan.key_positions.shape[1]
        # (rows * slots, kv_heads, head_dim) → (rows, kv_heads, slots, head_dim)
        gathered_keys = keys.index_select(0, self.plan.read).view(rows, slots, kv_heads, head_dim).transpose(1, 2)
        gathered_values = values.index_select(0, self.plan.read).view(rows, slots, kv_heads, head_dim).transpose(1, 2)
        return gathered_keys.contiguous(), gathered_values.contiguous(), self.plan.key_positions


class BatchCache:
    """The cache a decoder's forward sees for one batch of sequences: `cache[layer]` serves that
    layer from the pool. The sequences' blocks must already cover `positions (rows, new)`."""

    def __init__(self, pool: BlockPool, rows: list[SequenceBlocks], positions: torch.Tensor) -> None:
        plans = {group: _GroupPlan(pool, group, rows, positions) for group in pool.groups}
        self.layers = [_LayerView(pool, index, plans[window]) for index, window in enumerate(pool.layer_windows)]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> _LayerView:
        return self.layers[index]

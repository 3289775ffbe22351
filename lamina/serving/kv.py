"""The server's key/value memory: fixed-size blocks in a pool, a block table per sequence.

Layers are grouped by what they see (`None`: full attention, an int: a sliding window); each group
has its own pool of `num_blocks` blocks of `block_size` token slots, one key and one value tensor
`(num_blocks * block_size, kv_heads, head_dim)` per layer, and its own free list. A sequence holds,
per group, the list of its blocks in order (its table) and the logical index of the first one: a
full-attention group keeps every block from position 0; a sliding group gives back a block once
every position in it has left the window of the next query. Nothing is reallocated per request.

Prefix sharing: a block's keys and values depend only on the tokens up to its last position, so a
full block is named by a hash chain over the tokens (each block's digest covers the previous one's
and its own tokens). Once a sequence has written the full blocks of its prompt, they are offered
under their digests; a sequence admitted later whose tokens start the same way takes those blocks
into its table instead of computing them (each group the blocks its first query can see) and
starts its prefill after them. Only whole blocks are shared, never the block holding a sequence's
last prompt token, so nobody writes a shared block. A block counts its holders and goes back to
the free list (and out of the offered digests) when the last one releases it: finished,
cancelled, preempted or past a sliding window.

One forward call over a batch of sequences (each row at its own positions) goes through a
`BatchCache`: its `block_tables` let a step read the blocks in place (lamina's native step); for
the model's own layers it plans, once per group, where each new token is written (a flat slot) and
which slots each row reads, with the absolute position of each slot (-1 for none), and serves them
through the layer-cache protocol of `lamina.cache` (`update(key, value, cache_position)` → keys,
values and key positions, here per row). Worked example, block size 4, window 6: a row at position
9 holds logical blocks 1 (positions 4..7) and 2 (8..11); block 0 went back to the pool once the
query at position 8 no longer saw position 3.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..cache import BlockTables
from ..errors import InputError


@dataclass
class SequenceBlocks:
    """One sequence's tables: per group, its blocks in order and the logical index of the first;
    and the digests of its first full blocks (`digests[k]` names logical block k's tokens and all
    before them)."""

    tables: dict[int | None, list[int]] = field(default_factory=dict)
    first: dict[int | None, int] = field(default_factory=dict)
    digests: list[bytes] = field(default_factory=list)


class BlockPool:
    """Key/value blocks for every layer of a decoder, shared where prompts agree (module docstring)."""

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
        self.holders = {group: [0] * num_blocks for group in self.groups}  # sequences holding each block
        self.offered: dict[int | None, dict[bytes, int]] = {group: {} for group in self.groups}  # digest → block
        self._digest_of: dict[int | None, dict[int, bytes]] = {group: {} for group in self.groups}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def used_blocks(self) -> int:
        """Blocks held by sequences, over all groups (a shared block once)."""
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
            for _ in range(count):
                table.append(self.free[group].pop())
                self.holders[group][table[-1]] = 1
        return True

    def release_outside_window(self, blocks: SequenceBlocks, next_position: int) -> None:
        """Give back each sliding group's blocks that no query from `next_position` on can see."""
        for group, table in blocks.tables.items():
            kept = self._kept_from(group, next_position)
            drop = min(len(table), kept - blocks.first[group])
            if drop > 0:
                for block in table[:drop]:
                    self._drop(group, block)
                del table[:drop]
                blocks.first[group] += drop
            if not table:  # nothing held: the next block written is the first one a query still sees
                blocks.first[group] = max(blocks.first[group], kept)

    def release(self, blocks: SequenceBlocks) -> None:
        """Give back every block of a finished, cancelled or preempted sequence."""
        for group, table in blocks.tables.items():
            for block in reversed(table):
                self._drop(group, block)
        blocks.tables.clear()
        blocks.first.clear()
        blocks.digests.clear()

    def _drop(self, group: int | None, block: int) -> None:
        """One holder fewer; the last one's release frees the block and withdraws its offer."""
        self.holders[group][block] -= 1
        if self.holders[group][block] == 0:
            digest = self._digest_of[group].pop(block, None)
            if digest is not None:
                del self.offered[group][digest]
            self.free[group].append(block)

    def _digests(self, blocks: SequenceBlocks, tokens: list[int], count: int) -> list[bytes]:
        """The digests of the first `count` full blocks of `tokens`, extending those already known."""
        size = self.block_size
        while len(blocks.digests) < count:
            k = len(blocks.digests)
            previous = blocks.digests[-1] if blocks.digests else b""
            chunk = repr(tokens[k * size:(k + 1) * size]).encode()
            blocks.digests.append(hashlib.blake2b(previous + chunk, digest_size=16).digest())
        return blocks.digests[:count]

    def share_prefix(self, blocks: SequenceBlocks, tokens: list[int]) -> int:
        """Take into a sequence's empty tables the offered blocks of the longest run of whole blocks
        its `tokens` start with (at most up to the block before the one holding the last token), as
        far as every group offers the blocks a query there sees; returns how many tokens they hold
        (the sequence's prefill starts there)."""
        digests = self._digests(blocks, tokens, (len(tokens) - 1) // self.block_size)
        for count in range(len(digests), 0, -1):
            spans = {group: range(self._kept_from(group, count * self.block_size), count) for group in self.groups}
            if all(digests[k] in self.offered[group] for group, span in spans.items() for k in span):
                for group, span in spans.items():
                    blocks.first[group] = span.start
                    blocks.tables[group] = [self.offered[group][digests[k]] for k in span]
                    for block in blocks.tables[group]:
                        self.holders[group][block] += 1
                return count * self.block_size
        return 0

    def offer(self, blocks: SequenceBlocks, tokens: list[int]) -> None:
        """Offer a sequence's full blocks of `tokens` (written, its first tokens) for sharing, each
        group the ones it still holds; a digest already offered keeps its first block."""
        digests = self._digests(blocks, tokens, len(tokens) // self.block_size)
        for group, table in blocks.tables.items():
            first = blocks.first[group]
            for k in range(first, min(len(digests), first + len(table))):
                block = table[k - first]
                if digests[k] not in self.offered[group] and block not in self._digest_of[group]:
                    self.offered[group][digests[k]] = block
                    self._digest_of[group][block] = digests[k]


def _group_tables(group: int | None, rows: list[SequenceBlocks]) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's block tables `(rows, width)` (-1 past a row's own blocks) and first logical
    blocks `(rows,)`, on the CPU."""
    tables = [blocks.tables[group] for blocks in rows]
    width = max(len(table) for table in tables)
    padded = torch.tensor([table + [-1] * (width - len(table)) for table in tables], dtype=torch.long)
    return padded, torch.tensor([blocks.first[group] for blocks in rows], dtype=torch.long)


class _GroupPlan:
    """Where one group's layers write and read for one batch: `write (rows * new,)` flat slots,
    `read (rows * keys,)` flat slots and `key_positions (rows, keys)` (-1: nothing there).

    The keys are listed as `generate`'s cache holds them, so that the eager step sums them in the
    same order and in the same lanes: by position, except for a one-token step of a sliding group,
    whose ring of the window's slots holds position p in slot p % window. A full-attention group
    lists its held blocks whole, as a static cache holds slots past the last token (a prompt's
    attention sums its keys in vector lanes, and a key count cut short at the last token would move
    the last few keys from the lanes to the tail's separate sum); a sliding group's prompt chunk
    lists exactly its keys, as `generate`'s ring attends over a prompt's own keys."""

    def __init__(self, pool: BlockPool, group: int | None, table: torch.Tensor, first: torch.Tensor,
                 positions: torch.Tensor) -> None:
        size = pool.block_size
        last = positions[:, -1:]  # (rows, 1)
        if group is not None and positions.shape[1] == 1:
            ring = torch.arange(min(group, int(last.max()) + 1))
            key_positions = last - (last - ring) % group  # (rows, keys): the position in each ring slot
        elif group is None:
            held_end = int((first + (table >= 0).sum(dim=1)).max()) * size
            key_positions = torch.arange(held_end).expand(len(positions), -1)
        else:
            lowest = max(0, int(positions[:, 0].min()) - group + 1)
            key_positions = torch.arange(lowest, int(last.max()) + 1).expand(len(positions), -1)
        held = (key_positions >= first[:, None] * size) & (key_positions <= last)
        device = pool.keys[0].device
        self.write = self._slots(table, first, positions, size).reshape(-1).to(device)
        self.read = self._slots(table, first, key_positions.clamp(min=0), size).masked_fill(~held, 0).reshape(-1).to(device)
        self.key_positions = key_positions.masked_fill(~held, -1).to(device)

    @staticmethod
    def _slots(table: torch.Tensor, first: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
        """The flat pool slots of `positions (rows, n)` (any block outside a row's table reads its last)."""
        logical = (positions // size - first[:, None]).clamp(0, table.shape[1] - 1)
        return table.gather(1, logical).clamp(min=0) * size + positions % size


class _LayerView:
    """One layer's part of a `BatchCache`, in `lamina.cache`'s layer-cache protocol."""

    def __init__(self, batch: BatchCache, layer: int, group: int | None) -> None:
        self.batch, self.layer, self.group = batch, layer, group

    def update(self, key: torch.Tensor, value: torch.Tensor,
               cache_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`key/value (rows, kv_heads, new, head_dim)` are written to the rows' blocks; returns the
        keys and values each row reads, `(rows, kv_heads, keys, head_dim)`, and their positions
        `(rows, keys)`."""
        rows, kv_heads, _, head_dim = key.shape
        plan = self.batch.plan(self.group)
        pool = self.batch.pool
        keys, values = pool.keys[self.layer], pool.values[self.layer]
        keys.index_copy_(0, plan.write, key.transpose(1, 2).reshape(-1, kv_heads, head_dim).to(keys.dtype))
        values.index_copy_(0, plan.write, value.transpose(1, 2).reshape(-1, kv_heads, head_dim).to(values.dtype))
        count = plan.key_positions.shape[1]
        # (rows * keys, kv_heads, head_dim) → (rows, kv_heads, keys, head_dim)
        gathered_keys = keys.index_select(0, plan.read).view(rows, count, kv_heads, head_dim).transpose(1, 2)
        gathered_values = values.index_select(0, plan.read).view(rows, count, kv_heads, head_dim).transpose(1, 2)
        return gathered_keys.contiguous(), gathered_values.contiguous(), plan.key_positions


class BatchCache:
    """The cache a decoder's forward sees for one batch of sequences: `cache[layer]` serves that
    layer from the pool (gathering the keys each row reads), and `block_tables` lets a step read the
    blocks in place instead (`lamina.cache.BlockTables`, lamina's native step). The sequences'
    blocks must already cover `positions (rows, new)`."""

    def __init__(self, pool: BlockPool, rows: list[SequenceBlocks], positions: torch.Tensor) -> None:
        self.pool = pool
        self.positions = positions
        self._tables = {group: _group_tables(group, rows) for group in pool.groups}
        self._plans: dict[int | None, _GroupPlan] = {}
        windows = pool.layer_windows
        self.block_tables = BlockTables(pool.block_size, pool.keys, pool.values,
                                        [self._tables[window][0] for window in windows],
                                        [self._tables[window][1] for window in windows])
        self.layers = [_LayerView(self, index, window) for index, window in enumerate(windows)]

    def plan(self, group: int | None) -> _GroupPlan:
        """The group's plan, made when a layer first asks (a step that reads `block_tables` needs none)."""
        if group not in self._plans:
            self._plans[group] = _GroupPlan(self.pool, group, *self._tables[group], self.positions)
        return self._plans[group]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> _LayerView:
        return self.layers[index]

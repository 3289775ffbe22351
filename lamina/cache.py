"""Key/value caches, one per layer, each sized by what its layer can see.

Every layer cache answers `update(key, value, cache_position)` with the keys and values the new
queries attend over and the absolute position of each key slot (-1 for a slot not yet written).
Masks are built from those positions, so a ring buffer needs no `roll` and no host sync.

- `DynamicLayerCache`: grows with the sequence (the default for full-attention layers).
- `StaticLayerCache`: preallocated to a maximum length and written in place (for `torch.compile`).
- `RollingLayerCache`: a ring of `window` slots for a sliding-window layer; slot = position % window.
  Its memory never grows past the window. Worked example, window 4, prompt of 6 then one token:
  prefill attends over the 6 new keys (positions 0..5, the mask keeps each query's last 4) and
  stores positions 2..5 in slots 2,3,0,1; decoding position 6 writes slot 2 (evicting 2) and
  attends over slots holding 6,3,4,5. A window longer than the run holds only the run's slots
  (`max_length`, or grown as tokens come): no key can leave it, so slot = position still.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LayerCache:
    def update(
        self, key: torch.Tensor, value: torch.Tensor, cache_position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`key/value (batch, kv_heads, new, head_dim)`, `cache_position (new,)` →
        keys, values `(batch, kv_heads, slots, head_dim)` and key positions `(slots,)`."""
        raise NotImplementedError

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Keep the batch rows `beam_idx` (in that order)."""
        for name in ("keys", "values"):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.index_select(0, beam_idx))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)

    def reset(self) -> None:
        """Forget every stored token, keeping the buffers (a dynamic cache drops them)."""
        self.keys = self.values = None


class DynamicLayerCache(LayerCache):
    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, key, value, cache_position):
        if self.keys is None:
            self.keys, self.values = key, value
        else:
            self.keys = torch.cat((self.keys, key), dim=2)
            self.values = torch.cat((self.values, value), dim=2)
        return self.keys, self.values, torch.arange(self.keys.shape[2], device=key.device)


class StaticLayerCache(LayerCache):
    """Preallocated `(batch, kv_heads, max_length, head_dim)` buffers written in place; unwritten
    slots lie in the future of every query, so the causal mask hides them."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Buffers shaped and typed like `key/value (batch, kv_heads, new, head_dim)`, each its own dtype:
        under autocast the rotated keys come out float32 and the values in the autocast dtype."""
        self.keys, self.values = _buffers(key, value, self.max_length)
        self.positions = torch.arange(self.max_length, device=key.device)
        _fixed_address(self.keys, self.values)

    def reset(self) -> None:
        pass  # slots past the queries are masked as future positions until they are written again

    def update(self, key, value, cache_position):
        if self.keys is None:
            self.allocate(key, value)
        self.keys.index_copy_(2, cache_position, key)
        self.values.index_copy_(2, cache_position, value)
        return self.keys, self.values, self.positions


class RollingLayerCache(LayerCache):
    """A ring buffer for a sliding-window layer (see the module docstring): `slots` is the window,
    or the run's `max_length` when that is shorter; without a `max_length` the buffer grows with
    the tokens stored until it holds the window."""

    def __init__(self, window: int, max_length: int | None = None) -> None:
        self.window = window
        self.fixed = max_length is not None
        self.slots = min(window, max_length) if max_length is not None else 0
        self.stored = 0  # tokens written since the last reset (what a growing buffer must hold)
        self.written = False  # nothing stored yet: a prefill attends over its own keys only
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """`slots` slots typed like `key/value` (see `StaticLayerCache.allocate`), none written."""
        self.keys, self.values = _buffers(key, value, self.slots)
        self.positions = torch.full((self.slots,), -1, dtype=torch.long, device=key.device)
        _fixed_address(self.keys, self.values, self.positions)

    def _grow(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Without a `max_length`: room for what is stored plus `key (…, new, …)`, in doubling steps up to
        the window. Until then no position has wrapped (slot = position), so the stored slots keep
        their places in the larger buffer."""
        needed = min(self.window, self.stored + key.shape[2])
        if self.keys is not None and needed <= self.slots:
            return
        old = (self.keys, self.values, self.positions) if self.keys is not None else None
        self.slots = min(self.window, max(needed, 2 * self.slots))
        self.allocate(key, value)
        if old is not None:
            kept = old[2].shape[0]
            self.keys[:, :, :kept] = old[0]
            self.values[:, :, :kept] = old[1]
            self.positions[:kept] = old[2]

    def update(self, key, value, cache_position):
        if not self.fixed:  # (a compiled step's cache is fixed: no counter for it to specialise on)
            self._grow(key, value)
            self.stored += key.shape[2]
        elif self.keys is None:
            self.allocate(key, value)
        if key.shape[2] == 1:
            # one new token: its slot holds the only key that just left the window
            slot = cache_position % self.slots
            self.keys.index_copy_(2, slot, key)
            self.values.index_copy_(2, slot, value)
            self.record_positions(cache_position)
            return self.keys, self.values, self.positions
        # several new tokens: attend over what is stored plus all of them, then keep the last window
        if self.written:
            keys = torch.cat((self.keys, key), dim=2)
            values = torch.cat((self.values, value), dim=2)
            positions = torch.cat((self.positions, cache_position))
        else:
            keys, values, positions = key, value, cache_position
        kept = slice(-self.slots, None)
        slot = cache_position[kept] % self.slots
        self.keys.index_copy_(2, slot, key[:, :, kept])
        self.values.index_copy_(2, slot, value[:, :, kept])
        self.record_positions(cache_position[kept])
        return keys, values, positions

    def record_positions(self, cache_position: torch.Tensor) -> None:
        """Note that slots `cache_position % slots` now hold positions `cache_position (new ≤ slots,)`:
        what `update` records besides the keys and values, for a step that wrote those itself
        (lamina's native step writes the buffers directly)."""
        self.positions.index_copy_(0, cache_position % self.slots, cache_position)
        self.written = True

    def reorder(self, beam_idx: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys = self.keys.index_select(0, beam_idx)
            self.values = self.values.index_select(0, beam_idx)

    def reset(self) -> None:
        self.written = False
        self.stored = 0
        if self.positions is not None:
            self.positions.fill_(-1)


def _buffers(key: torch.Tensor, value: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed key and value buffers `(batch, kv_heads, slots, head_dim)` in `key`'s and `value`'s dtypes."""
    return tuple(
        torch.zeros((*t.shape[:2], slots, t.shape[3]), dtype=t.dtype, device=t.device) for t in (key, value)
    )


def _fixed_address(*buffers: torch.Tensor) -> None:
    """Tell `torch.compile` that these buffers, written in place by a compiled step, keep their
    address from call to call, so a CUDA graph can capture the writes (a CUDA graph skips
    any other input that is written to)."""
    if buffers[0].device.type == "cuda" and not torch.compiler.is_compiling():
        for buffer in buffers:
            torch._dynamo.mark_static_address(buffer)


@dataclass
class BlockTables:
    """A batch's view of a pool of fixed-size key/value blocks (the server's paged cache,
    `lamina.serving.kv`), for a step that reads the blocks in place.

    Per layer: `keys[l]`, `values[l] (blocks * block_size, kv_heads, head_dim)`, the pool shared by
    every row; `tables[l] (rows, width)` the block ids each row holds, in order (-1 past its own),
    and `firsts[l] (rows,)` the logical index of its first one: a row's keys of position p are in
    slot `tables[l][row, p // block_size - firsts[l][row]] * block_size + p % block_size`. Layers of
    one attention kind share their tables.
    """

    block_size: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    tables: list[torch.Tensor]
    firsts: list[torch.Tensor]


class Cache:
    """The per-layer caches of one model plus the count of tokens seen (`get_seq_length()`)."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerCache:
        return self.layers[index]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def advance(self, new_tokens: int) -> None:
        self.seen_tokens += new_tokens

    def reset(self) -> None:
        """Empty every layer for a new sequence, keeping preallocated buffers."""
        for layer in self.layers:
            layer.reset()
        self.seen_tokens = 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(beam_idx)

    def nbytes(self) -> int:
        """Bytes held by all key/value buffers."""
        return sum(layer.nbytes() for layer in self.layers)


def make_cache(
    layer_windows: list[int | None], kind: str = "dynamic", max_length: int | None = None
) -> Cache:
    """One layer cache per entry of `layer_windows` (None: full attention; an int: that window).

    `kind="static"` preallocates full-attention layers to `max_length` (required then).
    Sliding layers always get a rolling buffer bounded by their window (and by `max_length`).
    """
    if kind not in ("dynamic", "static"):
        raise ValueError(f"cache kind: expected 'dynamic' or 'static', found {kind!r}")
    layers: list[LayerCache] = []
    for window in layer_windows:
        if window is not None:
            layers.append(RollingLayerCache(window, max_length))
        elif kind == "static":
            if max_length is None:
                raise ValueError("a static cache needs max_length")
            layers.append(StaticLayerCache(max_length))
        else:
            layers.append(DynamicLayerCache())
    return Cache(layers)

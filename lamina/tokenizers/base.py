"""The pieces every lamina tokenizer shares: `BatchEncoding` and the batch helpers that pad,
truncate and turn id lists into tensors.

The helpers are plain functions over lists of ids so that every engine (the Rust `tokenizers`
library, sentencepiece, tekken, MLuke) pads and truncates the same way transformers does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..errors import InputError, TokenizerError

# what `pad_batch` fills each padded field with, besides `input_ids` (which takes the pad id)
PAD_FILL = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "position_ids": 0}
PADDING_SIDES = ("left", "right")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")


class BatchEncoding(dict):
    """A dict of model inputs (`input_ids`, `attention_mask`, …) that also reads as attributes.

    Values are lists of ids (one sequence: `list[int]`, a batch: `list[list[int]]`) or tensors of
    shape `(batch, seq)` after `convert_to_tensors("pt")`.
    """

    def __init__(self, data: dict[str, Any] | None = None, tensor_type: str | None = None) -> None:
        super().__init__(data or {})
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)

    def convert_to_tensors(self, tensor_type: str | None = "pt") -> BatchEncoding:
        """Turn every list value into a `torch.long` tensor (`"pt"`); `None` leaves them as lists."""
        if tensor_type is None:
            return self
        for key, value in self.items():
            self[key] = to_tensor(value, tensor_type, key)
        return self

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move every tensor value to `device` (in place); returns self, like transformers."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self


def to_tensor(value: Any, tensor_type: str, name: str = "value") -> Any:
    """`value` (ids, or equal-length id lists) as a tensor of `tensor_type` ("pt" or "np")."""
    if tensor_type not in ("pt", "np"):
        raise InputError(f"return_tensors: expected 'pt', 'np' or None, found {tensor_type!r}")
    if isinstance(value, torch.Tensor):
        return value if tensor_type == "pt" else value.numpy()
    if isinstance(value, list) and value and isinstance(value[0], list):
        lengths = {len(row) for row in value}
        if len(lengths) > 1:
            raise InputError(
                f"{name}: cannot make a tensor from sequences of lengths {sorted(lengths)}; "
                "pass padding=True (or 'max_length') to pad them to one length"
            )
    if isinstance(value, (list, tuple, int)):
        tensor = torch.tensor(value, dtype=torch.long)
        return tensor if tensor_type == "pt" else tensor.numpy()
    return value


def pad_batch(
    features: dict[str, list[list[int]]],
    pad_token_id: int | None,
    padding_side: str = "right",
    length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, list[list[int]]]:
    """Pad every field of a batch to one length: `length`, or the longest sequence when None.

    `features["input_ids"]` is padded with `pad_token_id`, other fields with `PAD_FILL`. An
    `attention_mask` is added when missing. Sequences already longer than `length` stay as they are.
    """
    if padding_side not in PADDING_SIDES:
        raise InputError(f"padding_side: expected 'left' or 'right', found {padding_side!r}")
    input_ids = features["input_ids"]
    if "attention_mask" not in features:
        features["attention_mask"] = [[1] * len(ids) for ids in input_ids]
    target = max((len(ids) for ids in input_ids), default=0) if length is None else length
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    if any(len(ids) < target for ids in input_ids) and pad_token_id is None:
        raise TokenizerError(
            "padding needs a pad token, and this tokenizer has none; set tokenizer.pad_token "
            "(for example tokenizer.pad_token = tokenizer.eos_token)"
        )
    padded = {}
    for key, rows in features.items():
        fill = pad_token_id if key == "input_ids" else PAD_FILL.get(key, 0)
        padded[key] = [pad_sequence(row, fill, target, padding_side) for row in rows]
    return padded


def pad_sequence(ids: Sequence[int], fill: int, length: int, side: str = "right") -> list[int]:
    """`ids` padded with `fill` on `side` up to `length` (unchanged when already that long)."""
    missing = length - len(ids)
    if missing <= 0:
        return list(ids)
    return [*ids, *[fill] * missing] if side == "right" else [*[fill] * missing, *ids]


def truncate_pair(
    ids: list[int],
    pair_ids: list[int] | None,
    num_tokens_to_remove: int,
    strategy: str = "longest_first",
    side: str = "right",
) -> tuple[list[int], list[int] | None]:
    """Remove `num_tokens_to_remove` ids from one sequence or a pair, as transformers does.

    `longest_first` removes one id at a time from whichever sequence is longer (the first when
    equal); `only_first` / `only_second` cut only that one and raise if it is too short.
    `side` is the end ids are removed from.
    """
    if strategy not in TRUNCATION_STRATEGIES:
        raise InputError(f"truncation: expected True, False or one of {TRUNCATION_STRATEGIES}, found {strategy!r}")
    if num_tokens_to_remove <= 0 or strategy == "do_not_truncate":
        return ids, pair_ids
    if strategy == "longest_first":
        if pair_ids is None:
            return _cut(ids, num_tokens_to_remove, side), None
        first, second = len(ids), len(pair_ids)
        for _ in range(num_tokens_to_remove):
            if first >= second and first > 0:
                first -= 1
            elif second > 0:
                second -= 1
        return _cut(ids, len(ids) - first, side), _cut(pair_ids, len(pair_ids) - second, side)
    if strategy == "only_second" and pair_ids is None:
        raise InputError("truncation='only_second' needs a pair of sequences, found a single one")
    target_is_first = strategy == "only_first"
    target = ids if target_is_first else pair_ids
    if len(target) < num_tokens_to_remove:
        raise InputError(
            f"truncation={strategy!r}: the sequence has {len(target)} tokens, fewer than the "
            f"{num_tokens_to_remove} that must go to reach max_length; use truncation='longest_first'"
        )
    cut = _cut(target, num_tokens_to_remove, side)
    return (cut, pair_ids) if target_is_first else (ids, cut)


def _cut(ids: list[int], count: int, side: str) -> list[int]:
    if count <= 0:
        return ids
    return ids[:-count] if side == "right" else ids[count:]


def flatten_ids(ids: Any) -> list[int]:
    """Ids given as a list, a tuple or a 0-/1-d tensor, as a flat list of ints."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise InputError(f"token ids: expected a 1-d tensor, found shape {tuple(ids.shape)}")
        return [int(i) for i in ids.reshape(-1).tolist()]
    if isinstance(ids, int):
        return [ids]
    if isinstance(ids, Iterable):
        return [int(i) for i in ids]
    raise InputError(f"token ids: expected a list of ints or a tensor, found {type(ids).__name__}")

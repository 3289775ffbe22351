"""The pieces every lamina tokenizer shares: `BatchEncoding` and the batch helpers that pad,
truncate and turn id lists into tensors.

The helpers are plain functions over lists of ids so that every engine (the Rust `tokenizers`
library, sentencepiece, tekken, MLuke) pads and truncates the same way transformers does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from ..errors import InputError, TokenIdError, TokenizerError, UnsupportedError
from .chat import apply_chat_template
from .mistral import encode_instruct

# what `pad_batch` fills each padded field with, besides `input_ids` (which takes the pad id)
PAD_FILL = {
    "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "position_ids": 0, "offset_mapping": (0, 0),
    "word_ids": None, "sequence_ids": None,
}  # fmt: skip
PADDING_SIDES = ("left", "right")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
# what a row of a tokenizer call holds per token before padding (see `_template_row`)
ROW_FIELDS = ("input_ids", "token_type_ids", "special_tokens_mask", "offset_mapping", "word_ids", "sequence_ids")


class BatchEncoding(dict):
    """A dict of model inputs (`input_ids`, `attention_mask`, …) that also reads as attributes.

    Values are lists of ids (one sequence: `list[int]`, a batch: `list[list[int]]`) or tensors of
    shape `(batch, seq)` after `convert_to_tensors("pt")`.
    """

    def __init__(
        self, data: dict[str, Any] | None = None, tensor_type: str | None = None, spans: list[TokenSpans] | None = None
    ) -> None:
        super().__init__(data or {})
        # per row, where each token comes from (what transformers keeps in `encodings`)
        self._spans = spans
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": dict(self), "spans": self._spans}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state["data"])
        self._spans = state["spans"]

    # ---- where tokens come from: transformers' BatchEncoding methods ----------------------
    @property
    def encodings(self) -> list[TokenSpans] | None:
        """Per row, each token's characters, word and sequence; None for inputs not made by a
        tokenizer call (`pad` of plain ids)."""
        return self._spans

    def _row(self, batch_index: int) -> TokenSpans:
        if self._spans is None:
            raise InputError(
                "BatchEncoding: no token spans; only the encodings of a tokenizer call on text know "
                "where their tokens come from"
            )
        if not -len(self._spans) <= batch_index < len(self._spans):
            raise InputError(f"batch_index: expected one of the {len(self._spans)} rows, found {batch_index}")
        return self._spans[batch_index]

    def _indices(self, batch_or_index: int, index: int | None) -> tuple[int, int]:
        # transformers' convention: one argument is an index in row 0, two are (row, index)
        return (0, batch_or_index) if index is None else (batch_or_index, index)

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """The word index of each token of row `batch_index` (None for special and pad tokens)."""
        return list(self._row(batch_index).words)

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 / 1 for the tokens of the first / second sequence of row `batch_index`, None for others."""
        return list(self._row(batch_index).sequences)

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        batch, token = self._indices(batch_or_token_index, token_index)
        return self._row(batch).sequences[token]

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        batch, token = self._indices(batch_or_token_index, token_index)
        return self._row(batch).words[token]

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The (start, end) characters of a token in its own sequence's text; None for special tokens."""
        batch, token = self._indices(batch_or_token_index, token_index)
        row = self._row(batch)
        return None if row.sequences[token] is None else CharSpan(*row.offsets[token])

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """The first token of sequence `sequence_index` whose span holds the character; None if none does."""
        batch, char = self._indices(batch_or_char_index, char_index)
        row = self._row(batch)
        tokens = _tokens_of(row, sequence_index)
        return next((token for token in tokens if row.offsets[token][0] <= char < row.offsets[token][1]), None)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> TokenSpan | None:
        """The tokens `[start, end)` of a word of sequence `sequence_index`; None if it has none."""
        batch, word = self._indices(batch_or_word_index, word_index)
        row = self._row(batch)
        tokens = [token for token in _tokens_of(row, sequence_index) if row.words[token] == word]
        return TokenSpan(tokens[0], tokens[-1] + 1) if tokens else None

    def word_to_chars(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> CharSpan | None:
        """The characters a word of sequence `sequence_index` covers; None if it has no tokens."""
        batch, word = self._indices(batch_or_word_index, word_index)
        tokens = self.word_to_tokens(batch, word, sequence_index)
        if tokens is None:
            return None
        offsets = self._row(batch).offsets
        return CharSpan(offsets[tokens.start][0], offsets[tokens.end - 1][1])

    def char_to_word(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        batch, char = self._indices(batch_or_char_index, char_index)
        token = self.char_to_token(batch, char, sequence_index)
        return None if token is None else self._row(batch).words[token]

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


class CharSpan(NamedTuple):
    """Characters `[start, end)` of a text."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens `[start, end)` of an encoding."""

    start: int
    end: int


@dataclass
class EncodedText:
    """One text's ids as an engine gives them: per id, its `(start, end)` characters in the text
    (None when the engine does not know them) and the index of its word."""

    ids: list[int]
    offsets: list[tuple[int, int]] | None = None
    words: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice | range) -> EncodedText:
        if isinstance(part, range):
            part = slice(part.start, part.stop)
        offsets = None if self.offsets is None else self.offsets[part]
        return EncodedText(self.ids[part], offsets, None if self.words is None else self.words[part])

    def extend(self, other: EncodedText) -> None:
        self.ids += other.ids
        self.offsets += other.offsets
        self.words += other.words


@dataclass
class TokenSpans:
    """Where each token of one encoded row comes from: its characters in its sequence's text,
    its word, and its sequence (0 / 1; None for special and pad tokens)."""

    offsets: list[tuple[int, int]] = field(default_factory=list)
    words: list[int | None] = field(default_factory=list)
    sequences: list[int | None] = field(default_factory=list)


class ExtraFields(Protocol):
    """Fields a tokenizer adds to each row of a call besides the per-token ones (mLUKE's entities):
    made from the tokens the row keeps, and padded along an axis of their own."""

    def owns(self, key: str) -> bool:
        """Whether the field `key` is one of these (padded by `pad`, not as tokens)."""

    def row(
        self, sample: int, kept: range, pair_kept: range | None, sequence_ids: list[int | None], truncation: str
    ) -> dict[str, list[Any]]:
        """The fields of one row of example `sample`, which keeps the tokens `kept` of its first
        sequence (and `pair_kept` of its second), laid out as `sequence_ids` says (0 / 1 for a
        token of the first / second sequence, None for a special token)."""

    def pad(
        self, features: dict[str, list[Any]], padding: str, pad_to_multiple_of: int | None, side: str
    ) -> dict[str, list[Any]]:
        """These fields of a batch (one list per row) under padding strategy `padding`."""


def _tokens_of(row: TokenSpans, sequence_index: int) -> list[int]:
    """The tokens of sequence `sequence_index` in a row; every token when the row has no such
    sequence (as the Rust engine answers for a single sequence asked about the second)."""
    tokens = [token for token, sequence in enumerate(row.sequences) if sequence == sequence_index]
    return tokens or list(range(len(row.sequences)))


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
    ids: Sequence[Any],
    pair_ids: Sequence[Any] | None,
    num_tokens_to_remove: int,
    strategy: str = "longest_first",
    side: str = "right",
) -> tuple[Sequence[Any], Sequence[Any] | None]:
    """Remove `num_tokens_to_remove` ids from one sequence or a pair, as transformers does.

    `longest_first` cuts the longer sequence down to what the shorter leaves, or both to about half
    of `max_length` (as transformers' Rust engine does); `only_first` / `only_second` cut only that one and raise if it is too short.
    `side` is the end ids are removed from.
    """
    keep, pair_keep = truncation_lengths(len(ids), None if pair_ids is None else len(pair_ids), num_tokens_to_remove, strategy)
    return _cut(ids, len(ids) - keep, side), None if pair_ids is None else _cut(pair_ids, len(pair_ids) - pair_keep, side)


def truncation_lengths(first: int, second: int | None, num_tokens_to_remove: int, strategy: str) -> tuple[int, int | None]:
    """How many tokens of a sequence (of `first` tokens) or pair stay when `num_tokens_to_remove`
    must go under `strategy`; see `truncate_pair`."""
    if strategy not in TRUNCATION_STRATEGIES:
        raise InputError(f"truncation: expected True, False or one of {TRUNCATION_STRATEGIES}, found {strategy!r}")
    if num_tokens_to_remove <= 0 or strategy == "do_not_truncate":
        return first, second
    if strategy == "longest_first":
        if second is None:
            return first - num_tokens_to_remove, None
        # budgets as the Rust engine sets them: the shorter sequence keeps its length when the
        # longer can absorb the cut; otherwise each gets half, the odd one going to the longer
        # (to the second when they are equally long)
        budget = first + second - num_tokens_to_remove
        shorter = min(first, second)
        keep_shorter, keep_longer = shorter, max(shorter, budget - shorter)
        if keep_shorter + keep_longer > budget:
            keep_shorter, keep_longer = budget // 2, budget - budget // 2
        return (keep_longer, keep_shorter) if first > second else (keep_shorter, keep_longer)
    if strategy == "only_second" and second is None:
        raise InputError("truncation='only_second' needs a pair of sequences, found a single one")
    target = first if strategy == "only_first" else second
    if target < num_tokens_to_remove:
        raise InputError(
            f"truncation={strategy!r}: the sequence has {target} tokens, fewer than the "
            f"{num_tokens_to_remove} that must go to reach max_length; use truncation='longest_first'"
        )
    if strategy == "only_first":
        return first - num_tokens_to_remove, second
    return first, second - num_tokens_to_remove


def overflow_windows(sequence: Sequence[Any], keep: int, stride: int = 0, side: str = "right") -> list[Sequence[Any]]:
    """`sequence` cut to its first `keep` items (its last with `side="left"`), then what was cut
    as further windows of `keep` items, each repeating the last `stride` items of the one before:
    the overflowing parts of transformers' Rust engine, in its order."""
    if len(sequence) <= keep:
        return [sequence]
    if keep == 0:
        return [sequence[:0], sequence]
    if stride >= keep:
        raise InputError(f"stride: expected fewer than the {keep} tokens each window keeps, found {stride}")
    step = keep - stride
    windows = []
    if side == "right":
        for start in range(0, len(sequence), step):
            windows.append(sequence[start : start + keep])
            if start + keep >= len(sequence):
                break
    else:
        for stop in range(len(sequence), 0, -step):
            windows.append(sequence[max(0, stop - keep) : stop])
            if stop <= keep:
                break
    return windows


def _cut(ids: Sequence[Any], count: int, side: str) -> Sequence[Any]:
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


SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# a template item: 0 / 1 for the first / second sequence, or a special token's text; with its type id
TemplateItem = tuple[int | str, int]
# model_max_length when none is known, as transformers writes it
VERY_LARGE_INTEGER = int(1e30)


class Template:
    """Where special tokens go around one sequence or a pair, and the type id of every part.

    `single = [("<s>", 0), (0, 0)]` reads "`<s>` then the first sequence"; BERT's pair is
    `[("[CLS]", 0), (0, 0), ("[SEP]", 0), (1, 1), ("[SEP]", 1)]`.
    """

    def __init__(self, single: list[TemplateItem], pair: list[TemplateItem]) -> None:
        self.single = single
        self.pair = pair

    @classmethod
    def plain(cls) -> Template:
        return cls([(0, 0)], [(0, 0), (1, 1)])

    @classmethod
    def around(cls, before: list[str], after: list[str]) -> Template:
        """Llama-style: the same tokens around each sequence (`<s> A </s>`, `<s> A </s> <s> B </s>`)."""
        single = [*[(t, 0) for t in before], (0, 0), *[(t, 0) for t in after]]
        pair = [*single, *[(t, 1) for t in before], (1, 1), *[(t, 1) for t in after]]
        return cls(single, pair)

    def count(self, pair: bool) -> int:
        return sum(isinstance(piece, str) for piece, _ in (self.pair if pair else self.single))

    @classmethod
    def from_post_processor(cls, entry: dict[str, Any] | None, source: str) -> Template:
        """The template a `tokenizer.json` post-processor describes."""
        kind = (entry or {}).get("type")
        if entry is None or kind == "ByteLevel":
            return cls.plain()
        if kind == "Sequence":
            steps = [step for step in entry["processors"] if step.get("type") != "ByteLevel"]
            return cls.from_post_processor(steps[0] if steps else None, source)
        if kind == "TemplateProcessing":

            def items(template: list[dict[str, Any]]) -> list[TemplateItem]:
                return [
                    (item["SpecialToken"]["id"], item["SpecialToken"]["type_id"])
                    if "SpecialToken" in item
                    else ("AB".index(item["Sequence"]["id"]), item["Sequence"]["type_id"])
                    for item in template
                ]

            return cls(items(entry["single"]), items(entry["pair"]))
        if kind in ("BertProcessing", "RobertaProcessing"):
            cls_token, sep_token = entry["cls"][0], entry["sep"][0]
            second = 0 if kind == "RobertaProcessing" else 1
            middle = [(sep_token, 0), (sep_token, 0)] if kind == "RobertaProcessing" else [(sep_token, 0)]
            single = [(cls_token, 0), (0, 0), (sep_token, 0)]
            return cls(single, [(cls_token, 0), (0, 0), *middle, (1, second), (sep_token, second)])
        raise TokenizerError(f"{source}: post_processor of type {kind!r} is not supported")

    def to_post_processor(self, token_to_id: Callable[[str], int | None]) -> dict[str, Any] | None:
        """This template as a `tokenizers` TemplateProcessing entry (None when it adds nothing)."""
        if self.count(False) == 0 and self.count(True) == 0 and [t for _, t in self.pair] == [0, 1]:
            return None
        tokens = {piece for piece, _ in [*self.single, *self.pair] if isinstance(piece, str)}
        special = {t: {"id": t, "ids": [token_to_id(t)], "tokens": [t]} for t in sorted(tokens)}

        def items(template: list[TemplateItem]) -> list[dict[str, Any]]:
            return [
                {"SpecialToken": {"id": piece, "type_id": type_id}}
                if isinstance(piece, str)
                else {"Sequence": {"id": "AB"[piece], "type_id": type_id}}
                for piece, type_id in template
            ]

        return {"type": "TemplateProcessing", "single": items(self.single), "pair": items(self.pair), "special_tokens": special}


class PreTrainedTokenizerBase:
    """A tokenizer with transformers' call surface over one engine (`engines.RustEngine`,
    `engines.SentencePieceEngine`, …), less its files (`classes.PreTrainedTokenizer` adds
    `from_pretrained` / `save_pretrained`).

    The engine turns text into ids; this class adds the special tokens of its `Template`,
    truncates, pads, makes tensors, decodes and renders chat templates. `tok(texts)`
    returns a `BatchEncoding` whose `input_ids` is `list[int]` for one text, `list[list[int]]`
    for a batch, or a `(batch, seq)` tensor with `return_tensors="pt"`.
    """

    model_input_names: list[str] = ["input_ids", "attention_mask"]
    padding_side: str = "right"
    truncation_side: str = "right"
    # defaults of transformers' class of the same name (special tokens, add_bos_token, …)
    class_defaults: dict[str, Any] = {}
    # the file `chat_template` was read from, named in the template's errors (set by the loaders)
    chat_template_file: str | None = None
    # `return_length` as transformers' Python tokenizers give it: a batch's lengths before
    # padding, one text's as a number (its Rust tokenizers: padded lengths, always a list)
    python_lengths: bool = False
    # file names of a class with vocabulary files of its own (mLUKE's), which it reads in
    # `from_vocab_files`; the others' files name their engine
    vocab_files_names: dict[str, str] = {}

    def __init__(
        self,
        engine: Any,
        template: Template | None = None,
        *,
        name_or_path: str = "",
        model_max_length: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        chat_template: str | dict[str, str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        model_input_names: list[str] | None = None,
        additional_special_tokens: Sequence[str] = (),
        extra_config: dict[str, Any] | None = None,
        **special_tokens: str | None,
    ) -> None:
        unknown = set(special_tokens) - set(SPECIAL_TOKEN_NAMES)
        if unknown:
            raise TokenizerError(
                f"unknown special-token name(s) {sorted(unknown)}; expected some of {list(SPECIAL_TOKEN_NAMES)}"
            )
        self.engine = engine
        self.template = template or Template.plain()
        self.name_or_path = name_or_path
        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        if padding_side is not None:
            self.padding_side = padding_side
        if truncation_side is not None:
            self.truncation_side = truncation_side
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        if model_input_names is not None:
            self.model_input_names = list(model_input_names)
        # keys of tokenizer_config.json lamina does not use itself, written back on save
        self.extra_config = dict(extra_config or {})
        self._special: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKEN_NAMES)
        for name, value in special_tokens.items():
            setattr(self, name, value)
        self._additional: list[str] = []
        self.add_special_tokens({"additional_special_tokens": list(additional_special_tokens)})

    # ---- special tokens -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # bos_token / bos_token_id / … read from `_special`; everything else is a real miss
        special = self.__dict__.get("_special")
        if special is not None:
            if name in special:
                return special[name]
            if name.endswith("_id") and name[:-3] in special:
                token = special[name[:-3]]
                return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SPECIAL_TOKEN_NAMES:
            token = None if value is None else str(value)
            if token is not None:
                self.engine.add_tokens([token], special=True)
            self._special[name] = token
        elif name.endswith("_id") and name[:-3] in SPECIAL_TOKEN_NAMES:
            setattr(self, name[:-3], None if value is None else self.convert_ids_to_tokens(int(value)))
        else:
            super().__setattr__(name, value)

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._additional)

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        named = {name: token for name, token in self._special.items() if token is not None}
        if self._additional:
            named["additional_special_tokens"] = list(self._additional)
        return named

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [t for t in self._special.values() if t is not None] + self._additional
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(self, special_tokens: dict[str, str | list[str]]) -> int:
        """Set named special tokens and/or extend `additional_special_tokens`; returns how many are new."""
        before = len(self)
        for name, value in special_tokens.items():
            if name == "additional_special_tokens":
                tokens = [str(t) for t in value]
                self.engine.add_tokens(tokens, special=True)
                self._additional.extend(t for t in tokens if t not in self._additional)
            elif name in SPECIAL_TOKEN_NAMES:
                setattr(self, name, value)
            else:
                raise TokenizerError(
                    f"add_special_tokens: unknown special-token name {name!r}; "
                    f"expected one of {[*SPECIAL_TOKEN_NAMES, 'additional_special_tokens']}"
                )
        return len(self) - before

    def add_tokens(self, tokens: str | list[str], special_tokens: bool = False) -> int:
        """Add tokens matched whole in the text; returns how many were new to the vocabulary."""
        return self.engine.add_tokens([tokens] if isinstance(tokens, str) else list(tokens), special=special_tokens)

    # ---- vocabulary -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary, without added tokens (as transformers counts it)."""
        return self.engine.base_vocab_size

    def __len__(self) -> int:
        return len(self.engine)

    def get_vocab(self) -> dict[str, int]:
        return self.engine.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, str]:
        return {i: content for i, (content, _) in sorted(self.engine.added_tokens().items())}

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        token_id = self.engine.token_to_id(token)
        if token_id is not None:
            return token_id
        unk = self._special["unk_token"]
        unk_id = None if unk is None else self.engine.token_to_id(unk)
        if unk_id is None:
            raise TokenizerError(f"token {token!r} is not in the vocabulary, and there is no unk_token to use")
        return unk_id

    def convert_ids_to_tokens(self, ids: int | Any, skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int) or (isinstance(ids, torch.Tensor) and ids.dim() == 0):
            return self._id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(i) for i in flatten_ids(ids) if i not in special]

    def _id_to_token(self, token_id: int) -> str:
        token = self.engine.id_to_token(token_id)
        if token is None:
            raise TokenIdError(f"token id {token_id} is out of range for a vocabulary of {len(self)} tokens")
        return token

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.engine.convert_tokens_to_string(tokens)

    def tokenize(self, text: str, split_special_tokens: bool = False) -> list[str]:
        """The token strings of `text`, without the template's special tokens."""
        return self.engine.tokenize(text, split_special_tokens)

    # ---- encoding -------------------------------------------------------------------------
    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.template.count(pair)

    def build_inputs_with_special_tokens(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        return self._apply_template(ids, pair_ids)[0]

    def create_token_type_ids_from_sequences(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        return self._apply_template(ids, pair_ids)[1]

    def get_special_tokens_mask(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        """1 where the template puts a special token around `ids` (and `pair_ids`), 0 on their ids."""
        return self._apply_template(ids, pair_ids)[2]

    def _apply_template(self, ids: list[int], pair_ids: list[int] | None) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, token_type_ids, special_tokens_mask) of one sequence or pair with the template's tokens."""
        row = self._template_row(_encoded(ids), None if pair_ids is None else _encoded(pair_ids), True)
        return row["input_ids"], row["token_type_ids"], row["special_tokens_mask"]

    def _template_row(self, first: EncodedText, second: EncodedText | None, add_special_tokens: bool) -> dict[str, list[Any]]:
        """One row's `ROW_FIELDS`: the sequence (or pair) laid out by the template (without special
        tokens, one after the other); special tokens get the offsets (0, 0), as in transformers."""
        template = self.template if add_special_tokens else Template.plain()
        row: dict[str, list[Any]] = {key: [] for key in ROW_FIELDS}
        for piece, type_id in template.single if second is None else template.pair:
            if isinstance(piece, str):
                part, sequence = EncodedText([self._token_to_id(piece)], [(0, 0)], [None]), None
            else:
                part, sequence = (first, second)[piece], piece
            count = len(part)
            row["input_ids"] += part.ids
            row["token_type_ids"] += [type_id] * count
            row["special_tokens_mask"] += [int(sequence is None)] * count
            row["offset_mapping"] += part.offsets if part.offsets is not None else [(0, 0)] * count
            row["word_ids"] += part.words if part.words is not None else [None] * count
            row["sequence_ids"] += [sequence] * count
        return row

    def __call__(
        self,
        text: str | list[str] | list[tuple[str, str]] | list[list[str]] | None = None,
        text_pair: str | list[str] | list[list[str]] | None = None,
        *,
        split_special_tokens: bool = False,
        is_split_into_words: bool = False,
        **options: Any,
    ) -> BatchEncoding:
        """Encode one text, a batch, or pairs (`text_pair`, or a list of 2-tuples) into model inputs.

        With `is_split_into_words=True` a text is a list of words (a batch, a list of such lists);
        each word is encoded on its own and `word_ids()` gives each token's word. `options` are
        `prepare_batch`'s. With `split_special_tokens=True` special-token text ("</s>") is encoded
        as plain text. The result knows where each token comes from (`word_ids`, `token_to_chars`,
        `char_to_token`, … as on transformers' BatchEncoding).
        """
        texts, pairs, batched = _batch_inputs(text, text_pair, is_split_into_words)
        encoded = self.engine.encode_texts(texts + (pairs or []), split_special_tokens, is_split_into_words)
        return self.prepare_batch(_split_pairs(encoded, len(texts)), batched=batched, **options)

    def prepare_batch(
        self,
        sequences: list[tuple[list[int] | EncodedText, list[int] | EncodedText | None]],
        *,
        batched: bool = True,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_overflowing_tokens: bool = False,
        return_length: bool = False,
        extra_fields: ExtraFields | None = None,
        **unsupported: Any,
    ) -> BatchEncoding:
        """Truncate, add special tokens to, and pad already-encoded (ids, pair ids) sequences.

        Padding and truncation follow transformers: `max_length` alone truncates, with `padding` it
        truncates only when `truncation` says so. With `return_overflowing_tokens` the tokens cut
        off come back as further rows (windows overlapping by `stride` tokens), and
        `overflow_to_sample_mapping` gives each row's sequence. Sequences given as `EncodedText`
        with offsets can return `offset_mapping` and give the result its token spans.
        `extra_fields` adds fields of its own to each row (see `ExtraFields`).
        """
        if unsupported:
            raise InputError(f"tokenizer call: unsupported argument(s) {sorted(unsupported)}")
        padding_strategy, truncation_strategy, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        encoded = [(_encoded(first), None if second is None else _encoded(second)) for first, second in sequences]
        spanned = all(first.offsets is not None and (second is None or second.offsets is not None) for first, second in encoded)
        if return_offsets_mapping and not spanned:
            raise UnsupportedError(f"return_offsets_mapping: the {self.engine.kind} engine gives no character offsets")
        rows, extra_rows, samples = [], [], []
        for index, (first, second) in enumerate(encoded):
            windows = self._windows(first, second, add_special_tokens, truncation_strategy, max_length, stride)
            for kept, pair_kept in windows if return_overflowing_tokens else windows[:1]:
                row = self._template_row(first[kept], None if second is None else second[pair_kept], add_special_tokens)
                rows.append(row)
                if extra_fields is not None:
                    extra_rows.append(extra_fields.row(index, kept, pair_kept, row["sequence_ids"], truncation_strategy))
                samples.append(index)
        features: dict[str, list[Any]] = {key: [row[key] for row in rows] for key in ROW_FIELDS}
        features["attention_mask"] = [[1] * len(row) for row in features["input_ids"]]
        lengths = [len(row) for row in features["input_ids"]]
        side = padding_side or self.padding_side
        if padding_strategy != "do_not_pad":
            length = max_length if padding_strategy == "max_length" else None
            features = pad_batch(features, self.pad_token_id, side, length, pad_to_multiple_of)
        spans = [TokenSpans(*row) for row in zip(features["offset_mapping"], features.pop("word_ids"), features.pop("sequence_ids"))]
        if not return_offsets_mapping:
            del features["offset_mapping"]
        if not return_special_tokens_mask:
            del features["special_tokens_mask"]
        if not (return_token_type_ids if return_token_type_ids is not None else "token_type_ids" in self.model_input_names):
            del features["token_type_ids"]
        if return_attention_mask is False:
            del features["attention_mask"]
        if extra_fields is not None and extra_rows and extra_rows[0]:
            columns = {key: [row[key] for row in extra_rows] for key in extra_rows[0]}
            features.update(extra_fields.pad(columns, padding_strategy, pad_to_multiple_of, side))
        if return_overflowing_tokens:
            features["overflow_to_sample_mapping"] = samples
        if return_length:
            padded = not (batched and self.python_lengths)
            features["length"] = [len(row) for row in features["input_ids"]] if padded else lengths
        if not batched and not return_tensors and not return_overflowing_tokens:
            # one text: flat lists (`length` stays a one-element list but in Python tokenizers)
            listed = set() if self.python_lengths else {"length"}
            features = {key: value if key in listed else value[0] for key, value in features.items()}
        return BatchEncoding(features, tensor_type=return_tensors, spans=spans if spanned else None)

    def _strategies(
        self, padding: bool | str, truncation: bool | str | None, max_length: int | None, pad_to_multiple_of: int | None
    ) -> tuple[str, str, int | None]:
        """(padding strategy, truncation strategy, max_length) as transformers settles them, and a
        `pad_to_multiple_of` that cannot agree with the length truncated to refused."""
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, self.model_max_length
        )
        truncating = truncation_strategy != "do_not_truncate"
        if truncating and padding_strategy != "do_not_pad" and pad_to_multiple_of and max_length and max_length % pad_to_multiple_of:
            raise InputError(
                f"pad_to_multiple_of: truncating to max_length {max_length} and padding to a multiple of "
                f"{pad_to_multiple_of} contradict each other; make max_length a multiple of it"
            )
        return padding_strategy, truncation_strategy, max_length

    def _windows(
        self,
        first: EncodedText,
        second: EncodedText | None,
        add_special_tokens: bool,
        strategy: str,
        max_length: int | None,
        stride: int,
    ) -> list[tuple[range, range | None]]:
        """The tokens (index ranges) of the truncated sequence (or pair) first, then of the
        overflowing windows, in the Rust engine's order."""
        whole, pair_whole = range(len(first)), None if second is None else range(len(second))
        if max_length is None or strategy == "do_not_truncate":
            return [(whole, pair_whole)]
        specials = self.template.count(second is not None) if add_special_tokens else 0
        excess = len(first) + len(second or ()) + specials - max_length
        keep, pair_keep = truncation_lengths(len(first), None if second is None else len(second), excess, strategy)
        firsts = overflow_windows(whole, keep, stride, self.truncation_side)
        if pair_whole is None:
            return [(window, None) for window in firsts]
        seconds = overflow_windows(pair_whole, pair_keep, stride, self.truncation_side)
        # each overflowing first window with every second window, then the first window with the
        # overflowing second ones
        windows = [(firsts[0], seconds[0])]
        for window in firsts[1:]:
            windows += [(window, pair_window) for pair_window in seconds]
        return windows + [(firsts[0], pair_window) for pair_window in seconds[1:]]

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> list[int] | torch.Tensor:
        """The ids of one text (or pair); with `return_tensors="pt"`, a `(1, seq)` tensor."""
        encoding = self(text, text_pair, add_special_tokens=add_special_tokens, return_tensors=return_tensors, **kwargs)
        return encoding["input_ids"]

    def pad(
        self,
        encoded_inputs: dict[str, Any] | list[dict[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        *,
        extra_fields: ExtraFields | None = None,
    ) -> BatchEncoding:
        """Pad features that are already ids (a dict of lists, or a list of dicts, as collators
        pass); the fields `extra_fields` owns are padded by it."""
        if isinstance(encoded_inputs, (list, tuple)):
            encoded_inputs = {key: [row[key] for row in encoded_inputs] for key in encoded_inputs[0]}
        if "input_ids" not in encoded_inputs:
            raise InputError(f"pad: the encodings have no input_ids, only {sorted(encoded_inputs)}")
        owned = {key for key in encoded_inputs if extra_fields is not None and extra_fields.owns(key)}
        # the per-token fields are padded; others (labels, length, …) pass through, as in transformers
        features = {key: [flatten_ids(row) for row in rows] for key, rows in encoded_inputs.items()
                    if key == "input_ids" or key in PAD_FILL}
        others = {key: [_as_list(row) for row in rows] for key, rows in encoded_inputs.items()
                  if key not in features and key not in owned}
        if return_attention_mask is not False and "attention_mask" in self.model_input_names:
            features.setdefault("attention_mask", [[1] * len(ids) for ids in features["input_ids"]])
        strategy, _, max_length = resolve_strategies(padding, False, max_length, self.model_max_length)
        side = padding_side or self.padding_side
        if strategy != "do_not_pad":
            length = max_length if strategy == "max_length" else None
            features = pad_batch(features, self.pad_token_id, side, length, pad_to_multiple_of)
        if return_attention_mask is False:
            features.pop("attention_mask", None)
        if owned:
            columns = {key: [_as_list(row) for row in encoded_inputs[key]] for key in owned}
            features.update(extra_fields.pad(columns, strategy, pad_to_multiple_of, side))
        return BatchEncoding({**features, **others}, tensor_type=return_tensors)

    # ---- decoding -------------------------------------------------------------------------
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **decode_options: Any,
    ) -> str:
        """The text of one sequence of ids (a list, or a 1-d tensor); `decode_options` are the
        engine's own (`XLMRobertaPieces`: `spaces_between_special_tokens`)."""
        return self.batch_decode([token_ids], skip_special_tokens, clean_up_tokenization_spaces, **decode_options)[0]

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **decode_options: Any,
    ) -> list[str]:
        """The texts of a batch of id sequences (a list of lists, or a `(batch, seq)` tensor)."""
        unknown = sorted(set(decode_options) - set(getattr(self.engine, "decode_options", ())))
        if unknown:
            raise InputError(f"decode: unsupported argument(s) {unknown} for the {self.engine.kind} engine")
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist() if sequences.dim() == 2 else [sequences.tolist()]
        batch = [flatten_ids(ids) for ids in sequences]
        size = len(self)
        for ids in batch:
            if ids and (min(ids) < 0 or max(ids) >= size):
                bad = next(i for i in ids if not 0 <= i < size)
                raise TokenIdError(f"decode: token id {bad} is out of range for a vocabulary of {size} tokens")
        texts = self.engine.decode_batch(batch, skip_special_tokens, **decode_options)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return [clean_up_tokenization(text) for text in texts] if clean else texts

    # ---- chat, files -------------------------------------------------------------------
    def apply_chat_template(self, conversation: list[dict[str, Any]] | list[list[dict[str, Any]]], **kwargs: Any) -> Any:
        """Render `conversation` with the tokenizer's Jinja chat template in a sandbox; see
        `lamina.tokenizers.chat.apply_chat_template` for the arguments."""
        return apply_chat_template(self, conversation, **kwargs)

    def encode_instruct(
        self, messages: list[dict[str, Any]], version: str | None = None, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Mistral's instruct format (v1 / v3 / v7, with tools, tool calls and tool results), the
        ids mistral_common gives; see `tokenizers.mistral`."""
        return encode_instruct(self, messages, version, tools)

    def saved_config(self, directory: Path) -> tuple[dict[str, Any], list[str]]:
        """What `save_pretrained` writes for this class besides the engine's files and the common
        configuration: tokenizer_config.json entries of its own, and the names of files it wrote
        to `directory` (none here)."""
        return {}, []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, engine={self.engine.kind}, "
            f"vocab_size={self.vocab_size}, padding_side={self.padding_side!r}, special_tokens={self.special_tokens_map})"
        )


def _batch_inputs(
    text: Any, text_pair: Any, is_split_into_words: bool
) -> tuple[list[Any], list[Any] | None, bool]:
    """(texts, second texts or None, whether the input was a batch) of a tokenizer call's
    arguments; with `is_split_into_words` each text is a list of words."""
    if text is None:
        raise InputError("tokenizer call: expected text (a string or a list of strings), found None")
    if is_split_into_words:
        batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        texts = [list(t) for t in text] if batched else [list(text)]
        pairs = None if text_pair is None else [list(t) for t in text_pair] if batched else [list(text_pair)]
        expected = "lists of words (strings)"
        items = [word for words in [*texts, *(pairs or [])] for word in words]
    else:
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None if text_pair is None else list(text_pair) if isinstance(text_pair, (list, tuple)) else [text_pair]
        if pairs is None and texts and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in texts):
            texts, pairs = [t[0] for t in texts], [t[1] for t in texts]
        expected = "strings"
        items = [*texts, *(pairs or [])]
    if pairs is not None and len(pairs) != len(texts):
        raise InputError(f"text_pair: expected {len(texts)} texts to pair with text, found {len(pairs)}")
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"tokenizer call: expected {expected}, found {type(item).__name__} {item!r:.60}")
    return texts, pairs, batched


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _encoded(sequence: list[int] | EncodedText) -> EncodedText:
    return sequence if isinstance(sequence, EncodedText) else EncodedText(flatten_ids(sequence))


def _split_pairs(rows: list[Any], count: int) -> list[tuple[Any, Any]]:
    """Rows of `count` first sequences then (maybe) as many second ones, as (first, second) pairs."""
    seconds = rows[count:] or [None] * count
    return list(zip(rows[:count], seconds))


def _padding_strategy(padding: bool | str) -> str:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return "do_not_pad"
    if padding == "max_length":
        return "max_length"
    raise InputError(f"padding: expected True, False, 'longest', 'max_length' or 'do_not_pad', found {padding!r}")


def resolve_strategies(
    padding: bool | str | None, truncation: bool | str | None, max_length: int | None, model_max_length: int
) -> tuple[str, str, int | None]:
    """transformers' padding and truncation strategies, and the `max_length` they work to.

    A `max_length` given alone turns truncation on only while `padding` is left False (as
    transformers 4.x and 5.x do); without `max_length`, padding to a length and truncation use
    `model_max_length`, and do neither when the tokenizer sets none.
    """
    if max_length is not None and padding is False and truncation is None:
        truncation = True
    padding_strategy, truncation_strategy = _padding_strategy(padding), _truncation_strategy(truncation)
    if max_length is None and (padding_strategy == "max_length" or truncation_strategy != "do_not_truncate"):
        if model_max_length < VERY_LARGE_INTEGER:
            max_length = model_max_length
        else:
            padding_strategy = "do_not_pad" if padding_strategy == "max_length" else padding_strategy
            truncation_strategy = "do_not_truncate"
    return padding_strategy, truncation_strategy, max_length


def _truncation_strategy(truncation: bool | str | None) -> str:
    if truncation is True:
        return "longest_first"
    if truncation is None or truncation is False:
        return "do_not_truncate"
    if truncation in TRUNCATION_STRATEGIES:
        return truncation
    raise InputError(f"truncation: expected True, False or one of {TRUNCATION_STRATEGIES}, found {truncation!r}")


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces word-level tokenizers leave before punctuation and English contractions."""
    for spaced, joined in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(spaced, joined)
    return text

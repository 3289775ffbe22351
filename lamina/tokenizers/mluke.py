"""mLUKE's tokenizer: XLM-R sentencepiece words plus an entity sequence.

Words come from a sentencepiece model laid out as in XLM-R / fairseq: ids 0-3 are
`<s> <pad> </s> <unk>`, sentencepiece piece `i` (from 3 on) is id `i + 1` (the "fairseq offset"),
and `<mask>` follows the last piece. `<ent>` / `<ent2>` are added after `<mask>`.

Entities are given as character spans of the text (and optionally their titles, looked up in a
JSON entity vocabulary whose keys are plain titles or `lang:title`). The text is cut at every span
boundary before it is tokenized, so each span maps to whole tokens; each entity then becomes an id
in `entity_ids` and a row of `max_mention_length` word positions in `entity_position_ids` (`-1`
pads the row). Tasks build the entity sequence themselves:

- `entity_classification`: one span, wrapped in `<ent>` markers, entity `[MASK]`;
- `entity_pair_classification`: two spans, head wrapped in `<ent>`, tail in `<ent2>`, entities
  `[MASK]` and `[MASK2]`;
- `entity_span_classification`: any number of spans, all `[MASK]`, plus
  `entity_start_positions` / `entity_end_positions`.

The reference is the sentencepiece `MLukeTokenizer` of transformers 4.x. Where that one
silently drops input, lamina raises (a text pair or entity titles under a task) or keeps it (the
pair's entities when the first text has none). It also fixes three of its bugs: batched
`padding="max_length"` pads entities to the `max_entity_length` of the call (not the
constructor's), `truncation_side="left"` keeps entity positions pointing at their words, and
`additional_special_tokens` never replace the `<ent>` / `<ent2>` markers.

The tokenizer is `base.PreTrainedTokenizer` over `XLMRobertaPieces` (the word vocabulary as an
engine): special tokens, id conversion, the `<s> A </s></s> B </s>` template, truncation and
padding rules and decoding are the base's; this module adds the entity sequence, its padding and
mLUKE's own files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import sentencepiece as spm

from ..errors import InputError, TokenizerError, UnsupportedError
from ..hub import resolve_model_dir
from .base import (
    SPECIAL_TOKEN_NAMES,
    VERY_LARGE_INTEGER,
    BatchEncoding,
    PreTrainedTokenizer,
    Template,
    clean_up_tokenization,
    flatten_ids,
    pad_batch,
    pad_sequence,
    resolve_strategies,
    truncate_pair,
)

VOCAB_FILES_NAMES = {"vocab_file": "sentencepiece.bpe.model", "entity_vocab_file": "entity_vocab.json"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

TASKS = ("entity_classification", "entity_pair_classification", "entity_span_classification")
# a task fixes the entity sequence's length: one entity, a head/tail pair, or as many as spans
TASK_ENTITY_LENGTH = {"entity_classification": 1, "entity_pair_classification": 2}
SPIECE_UNDERLINE = "▁"
FAIRSEQ_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
# sentencepiece ids 0-2 (<unk> <s> </s>) become fairseq ids 1-3; real pieces move up by one
FAIRSEQ_OFFSET = 1
# what the entity fields are padded with
ENTITY_PAD_FILL = {"entity_attention_mask": 0, "entity_token_type_ids": 0, "entity_start_positions": 0,
                   "entity_end_positions": 0}

Span = tuple[int, int]


@dataclass(frozen=True)
class SpecialToken:
    """A token matched whole in the text before sentencepiece sees it.

    `lstrip` / `rstrip`: the token swallows the whitespace on its left / right (`<mask>` does on
    its left, so "the <mask>" tokenizes like "the" followed by the mask).
    """

    content: str
    lstrip: bool = False
    rstrip: bool = False

    @classmethod
    def parse(cls, value: Any, where: str) -> SpecialToken:
        """A token given as a string or as transformers' serialised `AddedToken` dict."""
        if isinstance(value, SpecialToken):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping) and isinstance(value.get("content"), str):
            return cls(value["content"], bool(value.get("lstrip", False)), bool(value.get("rstrip", False)))
        content = getattr(value, "content", None)  # an AddedToken object from tokenizers/transformers
        if isinstance(content, str):
            return cls(content, bool(getattr(value, "lstrip", False)), bool(getattr(value, "rstrip", False)))
        raise TokenizerError(f"{where}: expected a token string or an AddedToken dict, found {value!r}")

    def to_json(self) -> dict[str, Any]:
        """transformers' `added_tokens_decoder` entry for this token."""
        return {"content": self.content, "lstrip": self.lstrip, "normalized": False, "rstrip": self.rstrip,
                "single_word": False, "special": True}


@dataclass
class _Example:
    """One example before special tokens: word ids and entities with token spans, per sequence."""

    ids: list[int]
    entity_ids: list[int] | None
    spans: list[Span] | None
    pair_ids: list[int] | None = None
    pair_entity_ids: list[int] | None = None
    pair_spans: list[Span] | None = None


class XLMRobertaPieces:
    """mLUKE's word vocabulary as the engine `PreTrainedTokenizer` drives: sentencepiece pieces in
    XLM-R's id layout (see the module docstring), plus added tokens matched whole in the text,
    each swallowing the whitespace on the side its `SpecialToken` says."""

    kind = "sentencepiece (XLM-R ids)"

    def __init__(self, vocab_file: str, sp_model_kwargs: dict[str, Any], saved: Mapping[int | str, Any],
                 flags: Mapping[str, SpecialToken]) -> None:
        self.vocab_file = vocab_file
        self.sp_model_kwargs = sp_model_kwargs
        self.sp_model = _load_sentencepiece(vocab_file, sp_model_kwargs)
        self.fairseq_tokens_to_ids = {**FAIRSEQ_SPECIAL_IDS, "<mask>": len(self.sp_model) + FAIRSEQ_OFFSET}
        self.fairseq_ids_to_tokens = {index: token for token, index in self.fairseq_tokens_to_ids.items()}
        self.flags = dict(flags)  # how tokens not saved with their own flags are matched
        self.added: dict[int, SpecialToken] = {}
        for key, value in saved.items():
            self.added[int(key)] = SpecialToken.parse(value, f"added_tokens_decoder[{key}]")
        self._index_added()

    def _index_added(self) -> None:
        self.added_ids = {token.content: index for index, token in self.added.items()}
        self._by_content = {token.content: token for token in self.added.values()}
        # longest first, so `<ent2>` is not read as `<ent>` followed by "2"
        alternatives = "|".join(map(re.escape, sorted(self.added_ids, key=len, reverse=True)))
        self._pattern = re.compile(f"({alternatives})") if alternatives else None

    def _piece_id(self, token: str) -> int | None:
        """The id of `token` in the fairseq / sentencepiece vocabulary, None when it has none."""
        if token in self.fairseq_tokens_to_ids:
            return self.fairseq_tokens_to_ids[token]
        piece_id = self.sp_model.piece_to_id(token)
        return piece_id + FAIRSEQ_OFFSET if piece_id else None

    @property
    def base_vocab_size(self) -> int:
        """Sentencepiece pieces, the fairseq offset and `<mask>` (added tokens not counted)."""
        return len(self.sp_model) + FAIRSEQ_OFFSET + 1

    def __len__(self) -> int:
        return self.base_vocab_size + sum(index >= self.base_vocab_size for index in self.added)

    def add_tokens(self, tokens: list[str], special: bool) -> int:
        """Give each token its vocabulary id, or the next free one; returns how many ids are new."""
        before = len(self)
        for content in tokens:
            if content in self.added_ids:
                continue
            index = self._piece_id(content)
            if index is None:
                index = max(self.base_vocab_size, max(self.added, default=-1) + 1)
            self.added[index] = self.flags.get(content, SpecialToken(content))
            self._index_added()
        return len(self) - before

    def added_tokens(self) -> dict[int, tuple[str, bool]]:
        return {index: (token.content, True) for index, token in self.added.items()}

    def token_to_id(self, token: str) -> int | None:
        return self.added_ids[token] if token in self.added_ids else self._piece_id(token)

    def id_to_token(self, index: int) -> str | None:
        if index in self.added:
            return self.added[index].content
        if index in self.fairseq_ids_to_tokens:
            return self.fairseq_ids_to_tokens[index]
        return self.sp_model.id_to_piece(index - FAIRSEQ_OFFSET) if 0 <= index < self.base_vocab_size else None

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.id_to_token(index): index for index in range(self.base_vocab_size)}
        vocab.update(self.added_ids)
        return vocab

    def tokenize(self, text: str, split_special_tokens: bool = False) -> list[str]:
        """Sentencepiece pieces of `text`, with added tokens (`<mask>`, `<ent>`, …) kept whole."""
        if split_special_tokens or self._pattern is None:
            return self.sp_model.encode(text, out_type=str)
        chunks = self._pattern.split(text)  # text, token, text, …, text
        for index in range(1, len(chunks), 2):
            token = self._by_content[chunks[index]]
            if token.rstrip and index + 1 < len(chunks):
                chunks[index + 1] = chunks[index + 1].lstrip()
            if token.lstrip and index > 0:
                chunks[index - 1] = chunks[index - 1].rstrip()
        pieces: list[str] = []
        for index, chunk in enumerate(chunks):
            if index % 2:
                pieces.append(chunk)
            elif chunk:
                pieces.extend(self.sp_model.encode(chunk, out_type=str))
        return pieces

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join sentencepiece pieces, turning the word-start marker back into spaces."""
        return "".join(tokens).replace(SPIECE_UNDERLINE, " ").strip()

    def decode(self, ids: list[int], skip: set[int], spaces_between_special_tokens: bool = True) -> str:
        """The text of `ids` without those in `skip`. Added tokens past the vocabulary (`<ent>`,
        `<ent2>`, …) stand apart, joined to the text around them with a space unless
        `spaces_between_special_tokens=False`."""
        parts: list[str] = []
        words: list[str] = []
        for index in ids:
            if index in skip:
                continue
            token = self.id_to_token(index)
            if token is None:
                raise TokenizerError(
                    f"token id {index} is out of range: the vocabulary has ids 0..{self.base_vocab_size - 1} and "
                    f"added tokens {sorted(self.added)}"
                )
            if index < self.base_vocab_size:
                words.append(token)
                continue
            if words and (text := self.convert_tokens_to_string(words)):
                parts.append(text)
            words = []
            parts.append(token)
        if words:
            parts.append(self.convert_tokens_to_string(words))
        return (" " if spaces_between_special_tokens else "").join(parts)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
        skip = {index for index, token in self.added.items()} if skip_special_tokens else set()
        return [self.decode(ids, skip) for ids in batch]

    def __getstate__(self) -> dict[str, Any]:
        # the sentencepiece processor is rebuilt from its serialised model (DataLoader workers)
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        proto = state.pop("sp_model")
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)


class MLukeTokenizer(PreTrainedTokenizer):
    """mLUKE tokenizer (sentencepiece words with the XLM-R id layout, and entities).

    Args:
        vocab_file: sentencepiece model (`sentencepiece.bpe.model`).
        entity_vocab_file: JSON object mapping entity titles (`"Tokyo"`, `"ja:東京"`) to ids; it
            must hold the four special entities.
        task: None, or one of `entity_classification`, `entity_pair_classification`,
            `entity_span_classification` (see the module docstring).
        max_entity_length: default cap on the entity sequence (1 / 2 under the first two tasks).
        max_mention_length: width of each `entity_position_ids` row.
        sp_model_kwargs: passed to `sentencepiece.SentencePieceProcessor` (e.g. sampling).

    Calling it returns a `BatchEncoding` with `input_ids` and `attention_mask` of shape
    `(batch, seq)`, and with entities `entity_ids`, `entity_attention_mask` (and, when asked,
    `entity_token_type_ids`) of shape `(batch, entities)`, `entity_position_ids` of shape
    `(batch, entities, max_mention_length)`, and under `entity_span_classification`
    `entity_start_positions` / `entity_end_positions` of shape `(batch, entities)`. A single
    example drops the batch axis unless `return_tensors` is set.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        entity_vocab_file: str | os.PathLike,
        bos_token: Any = "<s>",
        eos_token: Any = "</s>",
        sep_token: Any = "</s>",
        cls_token: Any = "<s>",
        unk_token: Any = "<unk>",
        pad_token: Any = "<pad>",
        mask_token: Any = "<mask>",
        task: str | None = None,
        max_entity_length: int = 32,
        max_mention_length: int = 30,
        entity_token_1: Any = "<ent>",
        entity_token_2: Any = "<ent2>",
        entity_unk_token: str = "[UNK]",
        entity_pad_token: str = "[PAD]",
        entity_mask_token: str = "[MASK]",
        entity_mask2_token: str = "[MASK2]",
        sp_model_kwargs: dict[str, Any] | None = None,
        *,
        additional_special_tokens: Sequence[Any] | None = None,
        added_tokens_decoder: Mapping[int | str, Any] | None = None,
        model_max_length: int = VERY_LARGE_INTEGER,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        if task is not None and task not in TASKS:
            raise TokenizerError(f"task: expected None or one of {TASKS}, found {task!r}")
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise TokenizerError(f"{name}: expected 'left' or 'right', found {side!r}")
        self.entity_vocab_file = str(entity_vocab_file)
        self.entity_vocab = _load_entity_vocab(self.entity_vocab_file)
        entity_special = {"entity_unk_token": entity_unk_token, "entity_pad_token": entity_pad_token,
                          "entity_mask_token": entity_mask_token, "entity_mask2_token": entity_mask2_token}
        for name, title in entity_special.items():
            if title not in self.entity_vocab:
                raise TokenizerError(
                    f"{self.entity_vocab_file}: {name}={title!r} is not in the entity vocabulary "
                    f"(it has {len(self.entity_vocab)} entries); is this mLUKE's entity_vocab.json?"
                )
            setattr(self, name, title)
            setattr(self, name + "_id", self.entity_vocab[title])
        self.task = task
        self._max_entity_length_arg = max_entity_length
        self.max_entity_length = TASK_ENTITY_LENGTH.get(task, max_entity_length)
        self.max_mention_length = max_mention_length

        # `<mask>` acts as a word: it takes the space before it, as in XLM-R
        if isinstance(mask_token, str):
            mask_token = SpecialToken(mask_token, lstrip=True)
        given = {"bos_token": bos_token, "eos_token": eos_token, "sep_token": sep_token, "cls_token": cls_token,
                 "unk_token": unk_token, "pad_token": pad_token, "mask_token": mask_token}
        special = {name: SpecialToken.parse(value, name) for name, value in given.items()}
        self.entity_token_1 = SpecialToken.parse(entity_token_1, "entity_token_1")
        self.entity_token_2 = SpecialToken.parse(entity_token_2, "entity_token_2")
        extra = [SpecialToken.parse(token, "additional_special_tokens") for token in additional_special_tokens or ()]
        additional = [*extra, self.entity_token_1, self.entity_token_2]
        flags: dict[str, SpecialToken] = {}
        for token in [*special.values(), *additional]:
            flags.setdefault(token.content, token)
        engine = XLMRobertaPieces(str(vocab_file), dict(sp_model_kwargs or {}), added_tokens_decoder or {}, flags)
        cls, sep = special["cls_token"].content, special["sep_token"].content
        # `<s> A </s>` and `<s> A </s></s> B </s>`, all of segment 0: XLM-R has no segment embeddings
        template = Template([(cls, 0), (0, 0), (sep, 0)], [(cls, 0), (0, 0), (sep, 0), (sep, 0), (1, 0), (sep, 0)])
        super().__init__(
            engine, template, model_max_length=model_max_length, padding_side=padding_side,
            truncation_side=truncation_side, clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            additional_special_tokens=list(dict.fromkeys(token.content for token in additional)),
            **{name: token.content for name, token in special.items()},
        )

    # ---------------------------------------------------------------- vocabulary

    @property
    def vocab_file(self) -> str:
        return self.engine.vocab_file

    @vocab_file.setter
    def vocab_file(self, path: str) -> None:
        self.engine.vocab_file = path

    @property
    def sp_model(self) -> spm.SentencePieceProcessor:
        return self.engine.sp_model

    @property
    def sp_model_kwargs(self) -> dict[str, Any]:
        return self.engine.sp_model_kwargs

    @property
    def entity_token_1_id(self) -> int:
        """Id of `<ent>`, the marker around the (head) entity under the classification tasks."""
        return self.convert_tokens_to_ids(self.entity_token_1.content)

    @property
    def entity_token_2_id(self) -> int:
        """Id of `<ent2>`, the marker around the tail entity under `entity_pair_classification`."""
        return self.convert_tokens_to_ids(self.entity_token_2.content)

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    # ---------------------------------------------------------------- words

    def _word_ids(self, text: str) -> list[int]:
        return self.convert_tokens_to_ids(self.tokenize(text))

    def _word_ids_and_token_spans(self, text: str, spans: list[Span]) -> tuple[list[int], list[Span]]:
        """Tokenize `text` cut at every span boundary; each character span becomes a token span.

        A space just before a boundary moves to the right-hand part, so the word after it keeps
        its word-start marker, as in the text tokenized whole.
        """
        ids: list[int] = []
        token_position: dict[int, int] = {}
        consumed = 0
        for boundary in sorted({position for span in spans for position in span}):
            cut = boundary - 1 if boundary > 0 and text[boundary - 1] == " " else boundary
            if cut != consumed:
                ids += self._word_ids(text[consumed:cut])
                consumed = cut
            token_position[boundary] = len(ids)
        ids += self._word_ids(text[consumed:])
        return ids, [(token_position[start], token_position[end]) for start, end in spans]

    # ---------------------------------------------------------------- entity inputs

    def _entity_ids(self, titles: list[str] | None, count: int) -> list[int]:
        if titles is None:
            return [self.entity_mask_token_id] * count
        return [self.entity_vocab.get(title, self.entity_unk_token_id) for title in titles]

    def _sequence(self, text: str, spans: Any, titles: Any, name: str) -> tuple[list[int], list[int] | None,
                                                                                 list[Span] | None]:
        """Word ids, entity ids and token spans of one text of an example without a task."""
        if spans is None:
            if titles is not None:
                raise TokenizerError(f"{_entities_name(name)} was given without {name}: entities need their spans")
            return self._word_ids(text), None, None
        spans = _check_spans(spans, text, name)
        titles = _check_titles(titles, len(spans), name)
        ids, token_spans = self._word_ids_and_token_spans(text, spans)
        return ids, self._entity_ids(titles, len(spans)), token_spans

    def _task_example(self, text: str, spans: Any) -> _Example:
        """Words with the task's markers inserted, and the task's fixed entity sequence."""
        if spans is None:
            raise TokenizerError(f"task={self.task!r} needs entity_spans: the character spans of its entities")
        spans = _check_spans(spans, text, "entity_spans")
        expected = TASK_ENTITY_LENGTH.get(self.task)
        if expected is not None and len(spans) != expected:
            raise TokenizerError(
                f"entity_spans: task={self.task!r} takes exactly {expected} span{'s' * (expected > 1)}, "
                f"found {len(spans)}: {spans}"
            )
        if not spans:
            raise TokenizerError(f"entity_spans: task={self.task!r} takes at least one span, found none")
        if expected == 2 and spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]:
            raise TokenizerError(
                f"entity_spans: the head {spans[0]} and the tail {spans[1]} overlap; task={self.task!r} wraps "
                "each in its own markers, so they must be disjoint"
            )
        ids, token_spans = self._word_ids_and_token_spans(text, spans)
        if self.task == "entity_span_classification":
            return _Example(ids, [self.entity_mask_token_id] * len(spans), token_spans)
        markers = [self.entity_token_1_id, self.entity_token_2_id]
        in_text_order = sorted(range(len(spans)), key=lambda index: spans[index][0])
        # insert from the rightmost mention so the token positions of the others stay valid
        for index in reversed(in_text_order):
            start, end = token_spans[index]
            ids = [*ids[:start], markers[index], *ids[start:end], markers[index], *ids[end:]]
        # a mention moves right by the two markers of each mention before it, and its own two
        # markers become part of it
        moved = {index: 2 * rank for rank, index in enumerate(in_text_order)}
        token_spans = [(start + moved[index], end + moved[index] + 2) for index, (start, end) in
                       enumerate(token_spans)]
        entity_ids = [self.entity_mask_token_id, self.entity_mask2_token_id][: len(spans)]
        return _Example(ids, entity_ids, token_spans)

    def _example(self, text: Any, text_pair: Any, spans: Any, spans_pair: Any, titles: Any,
                 titles_pair: Any) -> _Example:
        if not isinstance(text, str):
            raise TokenizerError(f"text: expected a string, found {type(text).__name__}")
        if text_pair is not None and not isinstance(text_pair, str):
            raise TokenizerError(f"text_pair: expected a string, found {type(text_pair).__name__}")
        if self.task is not None:
            ignored = {"text_pair": text_pair, "entity_spans_pair": spans_pair, "entities": titles,
                       "entities_pair": titles_pair}
            given = [name for name, value in ignored.items() if value is not None]
            if given:
                raise TokenizerError(
                    f"task={self.task!r} builds its own entity sequence from entity_spans of a single text; "
                    f"it cannot use {', '.join(given)} (transformers silently drops them)"
                )
            return self._task_example(text, spans)
        ids, entity_ids, token_spans = self._sequence(text, spans, titles, "entity_spans")
        example = _Example(ids, entity_ids, token_spans)
        if text_pair is not None:
            example.pair_ids, example.pair_entity_ids, example.pair_spans = self._sequence(
                text_pair, spans_pair, titles_pair, "entity_spans_pair")
        elif spans_pair is not None or titles_pair is not None:
            raise TokenizerError("entity_spans_pair / entities_pair were given without text_pair")
        return example

    # ---------------------------------------------------------------- encoding

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        entity_spans: list[Span] | list[list[Span]] | None = None,
        entity_spans_pair: list[Span] | list[list[Span]] | None = None,
        entities: list[str] | list[list[str]] | None = None,
        entities_pair: list[str] | list[list[str]] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text (`str`) or a batch (`list[str]`), optionally with pairs and entities.

        Batched arguments are lists with one entry per text. Keyword arguments are those of
        `encode_plus`.
        """
        if isinstance(text, str):
            return self.encode_plus(text, text_pair, entity_spans, entity_spans_pair, entities, entities_pair,
                                    **kwargs)
        if not isinstance(text, (list, tuple)) or not all(isinstance(item, str) for item in text):
            raise TokenizerError("text: expected a string (one example) or a list of strings (a batch)")
        columns = {"text_pair": text_pair, "entity_spans": entity_spans, "entity_spans_pair": entity_spans_pair,
                   "entities": entities, "entities_pair": entities_pair}
        for name, column in columns.items():
            if column is not None and (not isinstance(column, (list, tuple)) or len(column) != len(text)):
                found = f"{len(column)} entries" if isinstance(column, (list, tuple)) else type(column).__name__
                raise TokenizerError(f"{name}: a batch of {len(text)} texts needs a list of {len(text)}, found {found}")
        rows = [[column[index] if column is not None else None for column in columns.values()]
                for index in range(len(text))]
        examples = [self._example(item, *row) for item, row in zip(text, rows)]
        return self._encode(examples, batched=True, **kwargs)

    def encode_plus(
        self,
        text: str,
        text_pair: str | None = None,
        entity_spans: list[Span] | None = None,
        entity_spans_pair: list[Span] | None = None,
        entities: list[str] | None = None,
        entities_pair: list[str] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text (and its pair) with its entities.

        `entity_spans` are `(start, end)` character offsets of `text`; `entities` their titles
        (default: all `[MASK]`; unknown titles give `[UNK]`). Options: `add_special_tokens`,
        `padding` / `truncation` / `max_length` / `pad_to_multiple_of` / `padding_side`, which
        act on words as in transformers, `max_entity_length`, which caps (under truncation) and
        pads the entities, `return_tensors`, and `return_token_type_ids` (which adds
        `entity_token_type_ids`), `return_attention_mask`, `return_special_tokens_mask`,
        `return_length`. Returns a `BatchEncoding` of lists, or of tensors with a leading batch
        axis of 1 when `return_tensors="pt"`.
        """
        example = self._example(text, text_pair, entity_spans, entity_spans_pair, entities, entities_pair)
        return self._encode([example], batched=False, **kwargs)

    def batch_encode_plus(
        self,
        batch_text_or_text_pairs: Sequence[str | tuple[str, str]],
        batch_entity_spans_or_entity_spans_pairs: Sequence[Any] | None = None,
        batch_entities_or_entities_pairs: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode a batch given as transformers' `batch_encode_plus` takes it.

        Each entry is a text or a `(text, text_pair)`; its spans a list of spans or a pair of
        lists `(spans, spans_pair)`; its entities a list of titles or `(titles, titles_pair)`.
        """
        examples = []
        for index, item in enumerate(batch_text_or_text_pairs):
            text, text_pair = (item, None) if isinstance(item, str) else _two(item, "batch_text_or_text_pairs", index)
            spans, spans_pair = _split_pair(batch_entity_spans_or_entity_spans_pairs, index, is_pair=_is_span_pair)
            titles, titles_pair = _split_pair(batch_entities_or_entities_pairs, index,
                                              is_pair=lambda value: not isinstance(value[0], str))
            examples.append(self._example(text, text_pair, spans, spans_pair, titles, titles_pair))
        return self._encode(examples, batched=True, **kwargs)

    def _encode(
        self,
        examples: list[_Example],
        batched: bool,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        max_entity_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_length: bool = False,
        **unsupported: Any,
    ) -> BatchEncoding:
        _reject_unsupported(unsupported)
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, self.model_max_length
        )
        max_entity_length = max_entity_length or self.max_entity_length
        encoded = [self._prepare(example, add_special_tokens, truncation_strategy, max_length, max_entity_length,
                                 return_token_type_ids, return_special_tokens_mask) for example in examples]
        # a batch where only some texts have spans: the others have no entities, not missing fields
        entity_keys = {key for item in encoded for key in item if key.startswith("entity_")}
        for item in encoded:
            for key in entity_keys:
                item.setdefault(key, [])
        # transformers counts a batch's lengths before padding, a single example's after
        if return_length and batched:
            for item in encoded:
                item["length"] = len(item["input_ids"])
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        encoded = self._pad_examples(encoded, padding_strategy, max_length, max_entity_length, pad_to_multiple_of,
                                     padding_side, return_attention_mask)
        if return_length and not batched:
            encoded[0]["length"] = len(encoded[0]["input_ids"])
        columns = {key: [item[key] for item in encoded] for key in (encoded[0] if encoded else ["input_ids"])}
        if not batched and return_tensors is None:
            columns = {key: rows[0] for key, rows in columns.items()}
        return BatchEncoding(columns, tensor_type=return_tensors)

    def _prepare(
        self,
        example: _Example,
        add_special_tokens: bool,
        truncation: str,
        max_length: int | None,
        max_entity_length: int,
        return_token_type_ids: bool | None,
        return_special_tokens_mask: bool,
    ) -> dict[str, Any]:
        """One example's fields before padding: truncated words and entities, special tokens added."""
        ids, pair_ids = example.ids, example.pair_ids
        specials = (4 if pair_ids is not None else 2) if add_special_tokens else 0
        total = len(ids) + len(pair_ids or ()) + specials
        kept, pair_kept = ids, pair_ids
        if truncation != "do_not_truncate" and max_length and total > max_length:
            kept, pair_kept = truncate_pair(ids, pair_ids, total - max_length, truncation, self.truncation_side)
        # entities whose mention lost words to truncation are dropped, the others follow their words
        first = _entities_within(example.entity_ids, example.spans, len(ids), len(kept), self.truncation_side)
        second = _entities_within(example.pair_entity_ids, example.pair_spans, len(pair_ids or ()),
                                  len(pair_kept or ()), self.truncation_side)
        ids, pair_ids = kept, pair_kept
        if add_special_tokens:
            encoded: dict[str, Any] = {"input_ids": self.build_inputs_with_special_tokens(ids, pair_ids)}
            offsets = (1, len(ids) + 3)  # after <s>; after <s> A </s></s>
        else:
            encoded = {"input_ids": ids + (pair_ids or [])}
            offsets = (0, len(ids))
        if return_token_type_ids:
            encoded["token_type_ids"] = [0] * len(encoded["input_ids"])
        if return_special_tokens_mask:
            encoded["special_tokens_mask"] = (self.get_special_tokens_mask(ids, pair_ids) if add_special_tokens
                                              else [0] * len(encoded["input_ids"]))
        if example.entity_ids is None and example.pair_entity_ids is None:
            return encoded

        if first is None:
            first = []  # only the pair has entities
        count = len(first) + len(second or ())
        if truncation != "do_not_truncate" and count > max_entity_length:
            first, second = self._truncate_entities(first, second, count - max_entity_length, truncation)
        entities = [(entity, span, offsets[0]) for entity, span in first] + [
            (entity, span, offsets[1]) for entity, span in second or ()]
        encoded["entity_ids"] = [entity for entity, _, _ in entities]
        encoded["entity_position_ids"] = [self._mention_positions(start + offset, end + offset)
                                          for _, (start, end), offset in entities]
        if self.task == "entity_span_classification":
            encoded["entity_start_positions"] = [start + offset for _, (start, _), offset in entities]
            encoded["entity_end_positions"] = [end + offset - 1 for _, (_, end), offset in entities]
        if return_token_type_ids:
            encoded["entity_token_type_ids"] = [0] * len(entities)
        return encoded

    def _truncate_entities(self, first: list, second: list | None, excess: int, truncation: str) -> tuple[list, list]:
        try:
            return truncate_pair(first, second, excess, truncation, self.truncation_side)
        except InputError as err:
            raise InputError(f"cannot drop {excess} entities to reach max_entity_length: {err}") from None

    def _mention_positions(self, start: int, end: int) -> list[int]:
        """Word positions of a mention, cut or padded with -1 to `max_mention_length`."""
        positions = list(range(start, end))[: self.max_mention_length]
        return positions + [-1] * (self.max_mention_length - len(positions))

    # ---------------------------------------------------------------- padding

    def _pad_examples(
        self,
        encoded: list[dict[str, Any]],
        strategy: str,
        max_length: int | None,
        max_entity_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_attention_mask: bool,
    ) -> list[dict[str, Any]]:
        """Pad words (as every tokenizer does) and entities of every example to one length each, or
        only add the masks."""
        encoded = [dict(item) for item in encoded]
        if return_attention_mask:
            for item in encoded:
                item.setdefault("attention_mask", [1] * len(item["input_ids"]))
                if "entity_ids" in item:
                    item.setdefault("entity_attention_mask", [1] * len(item["entity_ids"]))
        if strategy == "do_not_pad" or not encoded:
            return encoded
        side = padding_side or self.padding_side
        columns = {key: [item[key] for item in encoded] for key in encoded[0] if isinstance(encoded[0][key], list)}
        words = {key: rows for key, rows in columns.items() if not key.startswith("entity_")}
        had_mask = "attention_mask" in words
        words = pad_batch(words, self.pad_token_id, side, max_length if strategy == "max_length" else None,
                          pad_to_multiple_of)
        if not had_mask:
            del words["attention_mask"]
        if strategy == "longest":
            max_entity_length = max((len(item.get("entity_ids", ())) for item in encoded), default=0)
        if pad_to_multiple_of:
            max_entity_length = _round_up(max_entity_length, pad_to_multiple_of)
        fill = {**ENTITY_PAD_FILL, "entity_ids": self.entity_pad_token_id,
                "entity_position_ids": [-1] * self.max_mention_length}
        for key, rows in columns.items():
            if key.startswith("entity_"):
                words[key] = [pad_sequence(row, fill[key], max_entity_length or 0, side) for row in rows]
        return [{**item, **{key: rows[index] for key, rows in words.items()}} for index, item in enumerate(encoded)]

    def pad(
        self,
        encoded_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        max_entity_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad encodings made without padding, e.g. in a DataLoader `collate_fn`, entities included.

        `encoded_inputs` is a list of single-example encodings or one dict of per-example lists
        (tensors are turned into lists first).
        """
        if isinstance(encoded_inputs, Mapping):
            columns = {key: _as_list(value) for key, value in encoded_inputs.items()}
            if "input_ids" not in columns:
                raise TokenizerError(f"pad: the encodings have no input_ids, only {sorted(columns)}")
            examples = [dict(zip(columns, row)) for row in zip(*columns.values())]
        else:
            examples = [{key: _as_list(value) for key, value in item.items()} for item in encoded_inputs]
        strategy, _, max_length = resolve_strategies(padding, False, max_length, self.model_max_length)
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        examples = self._pad_examples(examples, strategy, max_length, max_entity_length or self.max_entity_length,
                                      pad_to_multiple_of, padding_side, return_attention_mask)
        keys = list(examples[0]) if examples else ["input_ids"]
        return BatchEncoding({key: [item[key] for item in examples] for key in keys}, tensor_type=return_tensors)

    # ---------------------------------------------------------------- decoding

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
    ) -> str:
        """Text of `token_ids` (a list, or a 1-d tensor); `<ent>` / `<ent2>` stand apart (see
        `XLMRobertaPieces.decode`)."""
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        text = self.engine.decode(flatten_ids(token_ids), skip, spaces_between_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    # ---------------------------------------------------------------- files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> MLukeTokenizer:
        """Load a tokenizer directory (or Hub id): its two vocabularies and `tokenizer_config.json`.

        Keyword arguments override the saved configuration (e.g. `task=...`).
        """
        directory = resolve_model_dir(pretrained_model_name_or_path)
        config = _read_json(directory / TOKENIZER_CONFIG_FILE, default={})
        special_map = _read_json(directory / SPECIAL_TOKENS_MAP_FILE, default={})
        init: dict[str, Any] = {key: special_map[key] for key in (*SPECIAL_TOKEN_NAMES, "additional_special_tokens")
                                if key in special_map}
        init.update({key: value for key, value in config.items() if key in _CONFIG_KEYS})
        if "added_tokens_decoder" not in config:
            added = _read_json(directory / ADDED_TOKENS_FILE, default={})
            init["added_tokens_decoder"] = {index: content for content, index in added.items()}
        init.update(kwargs)
        for name, file_name in VOCAB_FILES_NAMES.items():
            init.setdefault(name, directory / file_name)
        tokenizer = cls(**init)
        tokenizer.name_or_path = str(pretrained_model_name_or_path)
        return tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the vocabularies and the config files in the layout transformers reads."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "added_tokens_decoder": {str(index): token.to_json()
                                     for index, token in sorted(self.engine.added.items())},
            "additional_special_tokens": self.additional_special_tokens,
            **{name: self._special[name] for name in SPECIAL_TOKEN_NAMES},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "entity_token_1": self.entity_token_1.content,
            "entity_token_2": self.entity_token_2.content,
            "entity_unk_token": self.entity_unk_token,
            "entity_pad_token": self.entity_pad_token,
            "entity_mask_token": self.entity_mask_token,
            "entity_mask2_token": self.entity_mask2_token,
            "max_entity_length": self._max_entity_length_arg,
            "max_mention_length": self.max_mention_length,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "sp_model_kwargs": self.sp_model_kwargs,
            "task": self.task,
            "tokenizer_class": type(self).__name__,
        }
        special_map = {name: self._special[name] for name in SPECIAL_TOKEN_NAMES}
        special_map["additional_special_tokens"] = self.additional_special_tokens
        added = {token.content: index for index, token in self.engine.added.items()
                 if index >= self.vocab_size}
        written = []
        for file_name, content in ((TOKENIZER_CONFIG_FILE, config), (SPECIAL_TOKENS_MAP_FILE, special_map),
                                   (ADDED_TOKENS_FILE, added)):
            path = directory / file_name
            path.write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(str(path))
        return (*written, *self.save_vocabulary(directory))

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write `sentencepiece.bpe.model` and `entity_vocab.json` (named `<prefix>-…` when given)."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise TokenizerError(f"save_vocabulary: {directory} is not a directory")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        sp_path = directory / f"{prefix}{VOCAB_FILES_NAMES['vocab_file']}"
        if Path(self.vocab_file).is_file():
            if Path(self.vocab_file).resolve() != sp_path.resolve():
                shutil.copyfile(self.vocab_file, sp_path)
        else:
            sp_path.write_bytes(self.sp_model.serialized_model_proto())
        entity_path = directory / f"{prefix}{VOCAB_FILES_NAMES['entity_vocab_file']}"
        entity_path.write_text(json.dumps(self.entity_vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        return str(sp_path), str(entity_path)

    def __repr__(self) -> str:
        return (f"MLukeTokenizer(vocab_size={self.vocab_size}, entities={len(self.entity_vocab)}, task={self.task!r}, "
                f"max_entity_length={self.max_entity_length}, max_mention_length={self.max_mention_length})")


# tokenizer_config.json keys that are constructor arguments; the rest (tokenizer_class, …) are metadata
_CONFIG_KEYS = frozenset({
    *SPECIAL_TOKEN_NAMES, "task", "max_entity_length", "max_mention_length", "entity_token_1", "entity_token_2",
    "entity_unk_token", "entity_pad_token", "entity_mask_token", "entity_mask2_token", "sp_model_kwargs",
    "additional_special_tokens", "added_tokens_decoder", "model_max_length", "padding_side", "truncation_side",
    "clean_up_tokenization_spaces",
})  # fmt: skip


def _load_sentencepiece(path: str, kwargs: dict[str, Any]) -> spm.SentencePieceProcessor:
    if not Path(path).is_file():
        raise TokenizerError(f"{path}: sentencepiece model not found")
    processor = spm.SentencePieceProcessor(**kwargs)
    try:
        processor.Load(path)
    except (OSError, RuntimeError) as err:
        raise TokenizerError(f"{path}: not a readable sentencepiece model ({err})") from None
    expected = {0: "<unk>", 1: "<s>", 2: "</s>"}
    found = {index: processor.id_to_piece(index) for index in expected if index < len(processor)}
    if found != expected:
        raise TokenizerError(
            f"{path}: the XLM-R id layout needs sentencepiece ids 0-2 to be <unk> <s> </s>, found {found}"
        )
    return processor


def _load_entity_vocab(path: str) -> dict[str, int]:
    vocab = _read_json(Path(path))
    if not isinstance(vocab, dict) or not all(isinstance(key, str) and isinstance(value, int) and value >= 0
                                              for key, value in vocab.items()):
        raise TokenizerError(f"{path}: expected a JSON object mapping entity titles to non-negative integer ids")
    return vocab


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise TokenizerError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as err:
        raise TokenizerError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from None


def _entities_name(spans_name: str) -> str:
    return spans_name.replace("entity_spans", "entities")


def _check_spans(spans: Any, text: str, name: str) -> list[Span]:
    """Spans as `(start, end)` int tuples inside `text`, with a message naming the bad one."""
    if not isinstance(spans, (list, tuple)):
        raise TokenizerError(f"{name}: expected a list of (start, end) character spans, found {type(spans).__name__}")
    checked = []
    for index, span in enumerate(spans):
        if not (isinstance(span, (tuple, list)) and len(span) == 2 and all(isinstance(v, Integral) for v in span)):
            raise TokenizerError(f"{name}[{index}]: expected a (start, end) tuple of ints, found {span!r}")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= len(text):
            raise TokenizerError(
                f"{name}[{index}] = {tuple(span)}: a span must satisfy 0 <= start < end <= len(text) = {len(text)}"
                + (" (it runs past the end of the text)" if end > len(text) else "")
            )
        checked.append((start, end))
    return checked


def _check_titles(titles: Any, count: int, spans_name: str) -> list[str] | None:
    name = _entities_name(spans_name)
    if titles is None:
        return None
    if not isinstance(titles, (list, tuple)) or not all(isinstance(title, str) for title in titles):
        raise TokenizerError(f"{name}: expected a list of entity titles (strings), found {titles!r}")
    if len(titles) != count:
        raise TokenizerError(
            f"{name} has {len(titles)} titles but {spans_name} has {count} spans; give one title per span"
        )
    return list(titles)


def _entities_within(entity_ids: list[int] | None, spans: list[Span] | None, length: int, kept: int,
                     side: str = "right") -> list[tuple[int, Span]] | None:
    """(entity, token span) pairs whose words all survive cutting `length` words to `kept`.

    Cutting from the left moves the surviving spans left by the number of words removed.
    """
    if entity_ids is None:
        return None
    removed = length - kept if side == "left" else 0
    return [(entity, (start - removed, end - removed)) for entity, (start, end) in zip(entity_ids, spans)
            if start >= removed and end - removed <= kept]


def _round_up(length: int | None, multiple: int) -> int | None:
    return None if length is None else -(-length // multiple) * multiple


def _two(item: Any, name: str, index: int) -> tuple[Any, Any]:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise TokenizerError(f"{name}[{index}]: expected a text or a (text, text_pair), found {item!r}")
    return item[0], item[1]


def _is_span_pair(value: Any) -> bool:
    # a pair is two lists of spans; a single sequence of spans holds (start, end) tuples
    return isinstance(value[0], list) and not (len(value[0]) == 2 and isinstance(value[0][0], int))


def _split_pair(batch: Sequence[Any] | None, index: int, is_pair: Any) -> tuple[Any, Any]:
    """The first- and second-sequence parts of a batch entry that may be a pair."""
    if batch is None:
        return None, None
    value = batch[index]
    if value is not None and len(value) > 0 and is_pair(value):
        return _two(value, "batch entry", index)
    return value, None


def _as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _reject_unsupported(options: dict[str, Any]) -> None:
    """Refuse, by name, the options of transformers' call that this tokenizer does not implement."""
    known = {"return_overflowing_tokens", "stride", "is_split_into_words", "return_offsets_mapping", "verbose",
             "split_special_tokens"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"MLukeTokenizer call: unsupported argument(s) {unknown}")
    active = sorted(name for name, value in options.items() if name != "verbose" and value not in (None, False, 0))
    if active:
        raise UnsupportedError(
            f"MLukeTokenizer does not implement {active}: it keeps no character offsets, takes whole texts rather "
            "than pre-split words, always splits out special tokens, and returns no overflowing windows"
        )

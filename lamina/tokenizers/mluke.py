"""mLUKE's tokenizer: XLM-R sentencepiece words plus an entity sequence.

The words are `classes.PreTrainedTokenizer` over `engines.XLMRobertaPieces` (XLM-R's id layout):
special tokens, id conversion, the `<s> A </s></s> B </s>` template, truncation, overflowing
windows, padding, offsets and word ids, decoding and the files are the base's. This module adds
the entities, as `EntityFields` the base lays out beside the words.

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
`additional_special_tokens` never replace the `<ent>` / `<ent2>` markers. What the reference
cannot do at all comes from the base: `return_offsets_mapping`, `word_ids()`, overflowing windows
(each keeps the entities whose mentions lie wholly inside it; refused under a task, whose entity
sequence is fixed) and `is_split_into_words` (without entity spans, which are characters of a text).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from ..errors import InputError, TokenizerError
from .base import VERY_LARGE_INTEGER, BatchEncoding, EncodedText, Template, pad_sequence, truncate_pair
from .classes import PreTrainedTokenizer
from .engines import SpecialToken, XLMRobertaPieces
from .files import TOKENIZER_CLASSES
from .formats import read_json

VOCAB_FILES_NAMES = {"vocab_file": "sentencepiece.bpe.model", "entity_vocab_file": "entity_vocab.json"}
TASKS = ("entity_classification", "entity_pair_classification", "entity_span_classification")
# a task fixes the entity sequence's length: one entity, a head/tail pair, or as many as spans
TASK_ENTITY_LENGTH = {"entity_classification": 1, "entity_pair_classification": 2}
# what the entity fields are padded with (`entity_ids` and `entity_position_ids` depend on the tokenizer)
ENTITY_PAD_FILL = {"entity_attention_mask": 0, "entity_token_type_ids": 0, "entity_start_positions": 0,
                   "entity_end_positions": 0}
Span = tuple[int, int]
# a sequence's entities: (entity id, its mention's token span) each
Entities = list[tuple[int, Span]]


@dataclass
class _Sequence:
    """One text of an example: its tokens, and its entities (None when it was given no spans)."""

    tokens: EncodedText
    entities: Entities | None = None


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
    python_lengths = True

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
        name_or_path: str = "",
    ) -> None:
        if task is not None and task not in TASKS:
            raise TokenizerError(f"task: expected None or one of {TASKS}, found {task!r}")
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise TokenizerError(f"{name}: expected 'left' or 'right', found {side!r}")
        self.entity_vocab_file = str(entity_vocab_file)
        self.entity_vocab = _load_entity_vocab(Path(self.entity_vocab_file))
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
            engine, template, name_or_path=name_or_path, model_max_length=model_max_length, padding_side=padding_side,
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
    def sp_model(self) -> Any:
        """The `sentencepiece.SentencePieceProcessor` of the words."""
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

    # ---------------------------------------------------------------- entity inputs

    def _entity_ids(self, titles: list[str] | None, count: int) -> list[int]:
        if titles is None:
            return [self.entity_mask_token_id] * count
        return [self.entity_vocab.get(title, self.entity_unk_token_id) for title in titles]

    def _sequence(self, text: str, spans: Any, titles: Any, name: str, split_special_tokens: bool) -> _Sequence:
        """The tokens and entities of one text of an example without a task."""
        if spans is None:
            if titles is not None:
                raise TokenizerError(f"{_entities_name(name)} was given without {name}: entities need their spans")
            return _Sequence(self.engine.encode_text(text, (), split_special_tokens)[0])
        spans = _check_spans(spans, text, name)
        titles = _check_titles(titles, len(spans), name)
        tokens, token_at = self.engine.encode_text(text, [p for span in spans for p in span], split_special_tokens)
        token_spans = [(token_at[start], token_at[end]) for start, end in spans]
        return _Sequence(tokens, list(zip(self._entity_ids(titles, len(spans)), token_spans)))

    def _task_sequence(self, text: str, spans: Any, split_special_tokens: bool) -> _Sequence:
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
        sequence = self._sequence(text, spans, None, "entity_spans", split_special_tokens)
        if self.task == "entity_span_classification":
            return sequence
        # each mention gets its marker on both sides, in text order; a marker stands for no
        # character (an empty span where it goes) and is no word
        markers = [self.entity_token_1_id, self.entity_token_2_id]
        tokens, token_spans, position = EncodedText([], [], []), [(0, 0)] * len(spans), 0
        for index in sorted(range(len(spans)), key=lambda index: spans[index][0]):
            (start, end), (char_start, char_end) = sequence.entities[index][1], spans[index]
            tokens.extend(sequence.tokens[position:start])
            first = len(tokens)
            tokens.extend(EncodedText([markers[index]], [(char_start, char_start)], [None]))
            tokens.extend(sequence.tokens[start:end])
            tokens.extend(EncodedText([markers[index]], [(char_end, char_end)], [None]))
            token_spans[index], position = (first, len(tokens)), end
        tokens.extend(sequence.tokens[position:])
        entity_ids = [self.entity_mask_token_id, self.entity_mask2_token_id][: len(spans)]
        return _Sequence(tokens, list(zip(entity_ids, token_spans)))

    def _example(self, text: Any, text_pair: Any, spans: Any, spans_pair: Any, titles: Any, titles_pair: Any,
                 split_special_tokens: bool = False) -> tuple[_Sequence, _Sequence | None]:
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
            return self._task_sequence(text, spans, split_special_tokens), None
        first = self._sequence(text, spans, titles, "entity_spans", split_special_tokens)
        if text_pair is None:
            if spans_pair is not None or titles_pair is not None:
                raise TokenizerError("entity_spans_pair / entities_pair were given without text_pair")
            return first, None
        return first, self._sequence(text_pair, spans_pair, titles_pair, "entity_spans_pair", split_special_tokens)

    # ---------------------------------------------------------------- encoding

    def __call__(
        self,
        text: str | list[str] | list[list[str]],
        text_pair: str | list[str] | None = None,
        entity_spans: list[Span] | list[list[Span]] | None = None,
        entity_spans_pair: list[Span] | list[list[Span]] | None = None,
        entities: list[str] | list[list[str]] | None = None,
        entities_pair: list[str] | list[list[str]] | None = None,
        *,
        is_split_into_words: bool = False,
        split_special_tokens: bool = False,
        **options: Any,
    ) -> BatchEncoding:
        """Encode one text (`str`) or a batch (`list[str]`), optionally with pairs and entities.

        Batched arguments are lists with one entry per text. With `is_split_into_words` a text is
        a list of words (a batch, a list of such lists) and there are no entities. Keyword
        arguments are those of `encode_plus`.
        """
        columns = {"text_pair": text_pair, "entity_spans": entity_spans, "entity_spans_pair": entity_spans_pair,
                   "entities": entities, "entities_pair": entities_pair}
        if is_split_into_words:
            given = [name for name, value in columns.items() if name != "text_pair" and value is not None]
            if given or self.task is not None:
                raise InputError(
                    "is_split_into_words: entities are character spans of a text, and words given as a list have "
                    f"none; found {', '.join(given) or f'task={self.task!r}'}"
                )
            return super().__call__(text, text_pair, is_split_into_words=True,
                                    split_special_tokens=split_special_tokens, **options)
        if isinstance(text, str):
            return self.encode_plus(text, *columns.values(), split_special_tokens=split_special_tokens, **options)
        if not isinstance(text, (list, tuple)) or not all(isinstance(item, str) for item in text):
            raise TokenizerError("text: expected a string (one example) or a list of strings (a batch)")
        for name, column in columns.items():
            if column is not None and (not isinstance(column, (list, tuple)) or len(column) != len(text)):
                found = f"{len(column)} entries" if isinstance(column, (list, tuple)) else type(column).__name__
                raise TokenizerError(f"{name}: a batch of {len(text)} texts needs a list of {len(text)}, found {found}")
        rows = [[column[index] if column is not None else None for column in columns.values()]
                for index in range(len(text))]
        examples = [self._example(item, *row, split_special_tokens) for item, row in zip(text, rows)]
        return self._encode(examples, batched=True, **options)

    def encode_plus(
        self,
        text: str,
        text_pair: str | None = None,
        entity_spans: list[Span] | None = None,
        entity_spans_pair: list[Span] | None = None,
        entities: list[str] | None = None,
        entities_pair: list[str] | None = None,
        *,
        split_special_tokens: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text (and its pair) with its entities.

        `entity_spans` are `(start, end)` character offsets of `text`; `entities` their titles
        (default: all `[MASK]`; unknown titles give `[UNK]`). Options are the base tokenizer's
        (`padding`, `truncation`, `max_length`, `stride`, `return_overflowing_tokens`,
        `return_offsets_mapping`, …), which act on words as in transformers, plus
        `max_entity_length`, which caps (under truncation) and pads the entities;
        `return_token_type_ids` adds `entity_token_type_ids`. Returns a `BatchEncoding` of lists,
        or of tensors with a leading batch axis of 1 when `return_tensors="pt"`.
        """
        example = self._example(text, text_pair, entity_spans, entity_spans_pair, entities, entities_pair,
                                split_special_tokens)
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

    def _encode(self, examples: list[tuple[_Sequence, _Sequence | None]], batched: bool,
                max_entity_length: int | None = None, **options: Any) -> BatchEncoding:
        if options.get("return_overflowing_tokens") and self.task is not None:
            raise InputError(
                f"return_overflowing_tokens: task={self.task!r} fixes the entity sequence of each example, which "
                "cannot be split over overflowing windows; truncate instead"
            )
        entities = [(first.entities, None if second is None else second.entities) for first, second in examples]
        fields = self._entity_fields(entities, max_entity_length, options.get("return_attention_mask"),
                                     bool(options.get("return_token_type_ids")))
        sequences = [(first.tokens, None if second is None else second.tokens) for first, second in examples]
        return self.prepare_batch(sequences, batched=batched, extra_fields=fields, **options)

    def _entity_fields(self, entities: list[tuple[Entities | None, Entities | None]], max_entity_length: int | None,
                       return_attention_mask: bool | None, return_token_type_ids: bool) -> EntityFields:
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        return EntityFields(
            entities, max_entity_length or self.max_entity_length, self.max_mention_length, self.entity_pad_token_id,
            self.truncation_side, self.task == "entity_span_classification", return_attention_mask,
            return_token_type_ids,
        )

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
        """Pad encodings made without padding, e.g. in a DataLoader `collate_fn`, entities (to
        `max_entity_length` under `padding="max_length"`) included."""
        fields = self._entity_fields([], max_entity_length, return_attention_mask, False)
        return super().pad(dict(encoded_inputs) if isinstance(encoded_inputs, Mapping) else encoded_inputs, padding,
                           max_length, pad_to_multiple_of, padding_side, return_attention_mask, return_tensors,
                           extra_fields=fields)

    # ---------------------------------------------------------------- files

    @classmethod
    def from_vocab_files(cls, directory: Path, config: dict[str, Any], name_or_path: str) -> MLukeTokenizer:
        """The tokenizer of `directory`'s vocabularies, configured by `config` (its
        special_tokens_map.json and tokenizer_config.json, then the caller's arguments)."""
        # the constructor's arguments; the other keys (tokenizer_class, …) are metadata
        arguments = set(inspect.signature(cls).parameters) - {"name_or_path"}
        init = {key: value for key, value in config.items() if key in arguments}
        if "added_tokens_decoder" not in init and (directory / "added_tokens.json").is_file():
            added = read_json(directory / "added_tokens.json", "added tokens")
            init["added_tokens_decoder"] = {index: content for content, index in added.items()}
        for name, file_name in VOCAB_FILES_NAMES.items():
            init.setdefault(name, directory / file_name)
        return cls(**init, name_or_path=name_or_path)

    def saved_config(self, directory: Path) -> tuple[dict[str, Any], list[str]]:
        """The tokenizer_config.json entries of mLUKE's own, and the entity vocabulary written to `directory`."""
        config = {
            "added_tokens_decoder": {str(index): token.to_json() for index, token in sorted(self.engine.added.items())},
            "entity_token_1": self.entity_token_1.content,
            "entity_token_2": self.entity_token_2.content,
            "entity_unk_token": self.entity_unk_token,
            "entity_pad_token": self.entity_pad_token,
            "entity_mask_token": self.entity_mask_token,
            "entity_mask2_token": self.entity_mask2_token,
            "max_entity_length": self._max_entity_length_arg,
            "max_mention_length": self.max_mention_length,
            "sp_model_kwargs": self.sp_model_kwargs,
            "task": self.task,
        }
        return config, [Path(self._write_entity_vocab(directory / VOCAB_FILES_NAMES["entity_vocab_file"])).name]

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write `sentencepiece.bpe.model` and `entity_vocab.json` (named `<prefix>-…` when given)."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise TokenizerError(f"save_vocabulary: {directory} is not a directory")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        sp_path = directory / f"{prefix}{VOCAB_FILES_NAMES['vocab_file']}"
        self.engine.save_model(sp_path)
        return str(sp_path), self._write_entity_vocab(directory / f"{prefix}{VOCAB_FILES_NAMES['entity_vocab_file']}")

    def _write_entity_vocab(self, path: Path) -> str:
        text = json.dumps(self.entity_vocab, indent=2, sort_keys=True, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        return str(path)


TOKENIZER_CLASSES[MLukeTokenizer.__name__] = MLukeTokenizer


@dataclass
class EntityFields:
    """mLUKE's entity fields as the base tokenizer lays them out beside the words (`base.ExtraFields`).

    `examples` holds each example's entities, per sequence. A row keeps the entities whose
    mentions lie wholly among the tokens it keeps (truncation or an overflowing window drops the
    others); under truncation, the entities past `max_entity_length` go too, by the truncation
    strategy. Padding pads them to the longest row, or to `max_entity_length`.
    """

    examples: list[tuple[Entities | None, Entities | None]]
    max_entity_length: int
    max_mention_length: int
    pad_id: int
    truncation_side: str
    span_positions: bool  # entity_start_positions / entity_end_positions (entity_span_classification)
    attention_mask: bool
    token_type_ids: bool

    def __post_init__(self) -> None:
        # a call where no text has spans has no entity fields; otherwise every row has them
        self.any_entities = any(first is not None or second is not None for first, second in self.examples)

    def owns(self, key: str) -> bool:
        return key.startswith("entity_")

    def row(self, sample: int, kept: range, pair_kept: range | None, sequence_ids: list[int | None],
            truncation: str) -> dict[str, list[Any]]:
        if not self.any_entities:
            return {}
        first, second = self.examples[sample]
        first = _entities_within(first or [], kept)
        second = None if second is None else _entities_within(second, pair_kept)
        count = len(first) + len(second or ())
        excess = count - self.max_entity_length
        if truncation != "do_not_truncate" and excess > 0:
            try:
                first, second = truncate_pair(first, second, excess, truncation, self.truncation_side)
            except InputError as err:
                raise InputError(f"cannot drop {excess} entities to reach max_entity_length: {err}") from None
        starts = [sequence_ids.index(sequence) if sequence in sequence_ids else 0 for sequence in (0, 1)]
        entities = [(entity, (start + starts[0], end + starts[0])) for entity, (start, end) in first]
        entities += [(entity, (start + starts[1], end + starts[1])) for entity, (start, end) in second or ()]
        fields: dict[str, list[Any]] = {
            "entity_ids": [entity for entity, _ in entities],
            "entity_position_ids": [self._mention_positions(start, end) for _, (start, end) in entities],
        }
        if self.span_positions:
            fields["entity_start_positions"] = [start for _, (start, _) in entities]
            fields["entity_end_positions"] = [end - 1 for _, (_, end) in entities]
        if self.token_type_ids:
            fields["entity_token_type_ids"] = [0] * len(entities)
        return fields

    def _mention_positions(self, start: int, end: int) -> list[int]:
        """Word positions of a mention, cut or padded with -1 to `max_mention_length`."""
        positions = list(range(start, end))[: self.max_mention_length]
        return positions + [-1] * (self.max_mention_length - len(positions))

    def pad(self, features: dict[str, list[Any]], padding: str, pad_to_multiple_of: int | None,
            side: str) -> dict[str, list[Any]]:
        if self.attention_mask:
            features.setdefault("entity_attention_mask", [[1] * len(row) for row in features["entity_ids"]])
        if padding == "do_not_pad":
            return features
        longest = max((len(row) for row in features["entity_ids"]), default=0)
        length = longest if padding == "longest" else self.max_entity_length
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        fill = {**ENTITY_PAD_FILL, "entity_ids": self.pad_id, "entity_position_ids": [-1] * self.max_mention_length}
        return {key: [pad_sequence(row, fill[key], length, side) for row in rows] for key, rows in features.items()}


def _entities_within(entities: Entities, kept: range) -> Entities:
    """The entities whose mentions lie wholly among the tokens `kept`, their spans counted from its start."""
    return [(entity, (start - kept.start, end - kept.start)) for entity, (start, end) in entities
            if start >= kept.start and end <= kept.stop]


def _load_entity_vocab(path: Path) -> dict[str, int]:
    vocab = read_json(path, "entity vocabulary")
    if not isinstance(vocab, dict) or not all(isinstance(key, str) and isinstance(value, int) and value >= 0
                                              for key, value in vocab.items()):
        raise TokenizerError(f"{path}: expected a JSON object mapping entity titles to non-negative integer ids")
    return vocab


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

"""The two engines that turn text into ids: the Rust `tokenizers` library and sentencepiece.

Both take whole batches to native code, so no merge loop ever runs in Python. An engine knows
nothing of templates, padding or truncation (`base.PreTrainedTokenizer` does those); it encodes
raw text, decodes ids, and keeps the added tokens that must be matched whole in the text.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import sentencepiece
import tokenizers

from ..errors import TokenizerError
from .base import EncodedText
from .formats import added_token, metaspace_document, read_json


class RustEngine:
    """A `tokenizers.Tokenizer` built from a `tokenizer.json` document (a dict).

    The document's own post-processor, padding and truncation are switched off: lamina applies
    its template, truncation and padding to the id lists itself, the same way for every engine.
    """

    kind = "tokenizers"

    def __init__(self, document: dict[str, Any], source: str = "tokenizer.json") -> None:
        self.source = source
        # the template the document states; lamina applies it itself (see `base.Template`)
        self.post_processor = document.get("post_processor")
        document = dict(document, post_processor=None, padding=None, truncation=None)
        try:
            self.backend = tokenizers.Tokenizer.from_str(json.dumps(document))
        except Exception as err:  # the Rust parser raises a bare Exception with serde's message
            raise TokenizerError(f"{source}: not a valid tokenizers document ({err})") from None

    @classmethod
    def from_file(cls, path: Path) -> RustEngine:
        document = read_json(path, "tokenizer")
        if not isinstance(document, dict) or "model" not in document:
            raise TokenizerError(f"{path}: expected a tokenizers document with a 'model' entry, found none")
        return cls(document, str(path))

    def document(self) -> dict[str, Any]:
        return json.loads(self.backend.to_str())

    def _encodings(
        self, texts: list[str] | list[list[str]], split_special_tokens: bool, pretokenized: bool = False
    ) -> list[tokenizers.Encoding]:
        self.backend.encode_special_tokens = split_special_tokens
        try:
            return self.backend.encode_batch(texts, is_pretokenized=pretokenized, add_special_tokens=False)
        except Exception as err:  # the Rust model's own refusal (a WordLevel vocabulary without its unk token)
            raise TokenizerError(f"{self.source}: the tokenizer cannot encode this text ({err})") from None
        finally:
            self.backend.encode_special_tokens = False

    def encode_batch(self, texts: list[str], split_special_tokens: bool = False) -> list[list[int]]:
        return [encoding.ids for encoding in self._encodings(texts, split_special_tokens)]

    def encode_texts(
        self, texts: list[str] | list[list[str]], split_special_tokens: bool = False, pretokenized: bool = False
    ) -> list[EncodedText]:
        """Each text's ids with their character spans and word indices (`pretokenized`: each text
        is a list of words, and spans are within each word)."""
        encodings = self._encodings(texts, split_special_tokens, pretokenized)
        return [EncodedText(e.ids, e.offsets, e.word_ids) for e in encodings]

    def tokenize(self, text: str, split_special_tokens: bool = False) -> list[str]:
        return [token for encoding in self._encodings([text], split_special_tokens) for token in encoding.tokens]

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return self.backend.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def continuing_subword_prefix(self) -> str | None:
        """The mark of pieces that continue a word ("##" for WordPiece); None when the model has none."""
        return getattr(self.backend.model, "continuing_subword_prefix", None)

    @property
    def base_vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def add_tokens(self, tokens: list[str], special: bool) -> int:
        # tokens the document already declares keep their flags (lstrip, normalized, …)
        declared = {token.content for token in self.backend.get_added_tokens_decoder().values()}
        added = [
            tokenizers.AddedToken(token, special=special, normalized=not special) for token in tokens if token not in declared
        ]
        if not added:
            return 0
        return self.backend.add_special_tokens(added) if special else self.backend.add_tokens(added)

    def added_tokens(self) -> dict[int, tuple[str, bool]]:
        """id → (content, special) for every added token."""
        return {i: (t.content, t.special) for i, t in self.backend.get_added_tokens_decoder().items()}

    def save(self, directory: Path, post_processor: dict[str, Any] | None) -> list[str]:
        document = self.document()
        document["post_processor"] = post_processor
        (directory / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
        return ["tokenizer.json"]


class SentencePieceEngine:
    """A sentencepiece model (`tokenizer.model`): Llama/Mistral byte-fallback BPE or a unigram model.

    Text is first cut at added tokens (the control pieces `<s>`, `[INST]`, … and any token added
    later); the pieces between are encoded by sentencepiece in one batch call. As transformers does,
    only text at the very start of the input gets sentencepiece's dummy-prefix space: a piece that
    follows an added token is encoded as it stands.
    """

    kind = "sentencepiece"
    # pieces mark the start of a word ("▁"), not its continuation
    continuing_subword_prefix = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model = self._load(path, add_dummy_prefix=None)
        self.model_no_prefix = self._load(path, add_dummy_prefix=False)
        size = self.model.get_piece_size()
        # every control and user-defined piece is matched whole in the text, as transformers does
        self._added: dict[str, int] = {}
        self._special_ids: set[int] = set()
        for piece_id in range(size):
            if self.model.is_control(piece_id) or self.model.is_unknown(piece_id):
                self._register(self.model.id_to_piece(piece_id), piece_id, special=True)
        self._extra: dict[int, str] = {}
        self._pattern: re.Pattern[str] | None = None

    @staticmethod
    def _load(path: Path, add_dummy_prefix: bool | None) -> sentencepiece.SentencePieceProcessor:
        try:
            proto = path.read_bytes()
        except OSError as err:
            raise TokenizerError(f"{path}: cannot read the sentencepiece model ({err.strerror})") from None
        model = sentencepiece.SentencePieceProcessor()
        try:
            if add_dummy_prefix is not None:
                proto = with_dummy_prefix(proto, add_dummy_prefix, path)
            model.LoadFromSerializedProto(proto)
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{path}: not a valid sentencepiece model ({err})") from None
        return model

    def _register(self, token: str, token_id: int, special: bool) -> None:
        self._added[token] = token_id
        if special:
            self._special_ids.add(token_id)
        self._pattern = None

    @property
    def special_ids(self) -> set[int]:
        return self._special_ids

    def _split(self, text: str) -> list[tuple[str, int | None]]:
        """`text` cut into (plain text, None) and (token, id) pieces at added tokens, longest first."""
        if not self._added:
            return [(text, None)]
        if self._pattern is None:
            alternatives = sorted(self._added, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(token) for token in alternatives))
        pieces: list[tuple[str, int | None]] = []
        start = 0
        for match in self._pattern.finditer(text):
            if match.start() > start:
                pieces.append((text[start : match.start()], None))
            pieces.append((match.group(), self._added[match.group()]))
            start = match.end()
        if start < len(text):
            pieces.append((text[start:], None))
        return pieces

    def encode_batch(self, texts: list[str], split_special_tokens: bool = False) -> list[list[int]]:
        if split_special_tokens or not self._added:
            return self.model.encode(texts)
        split = [self._split(text) for text in texts]
        # pieces at the start of their text take the dummy prefix, the others do not; each group
        # goes to sentencepiece as one batch
        first = [pieces[0][0] for pieces in split if pieces and pieces[0][1] is None]
        later = [text for pieces in split for text, token_id in pieces[1:] if token_id is None]
        encoded_first = iter(self.model.encode(first))
        encoded_later = iter(self.model_no_prefix.encode(later))
        batch = []
        for pieces in split:
            ids: list[int] = []
            for position, (text, token_id) in enumerate(pieces):
                if token_id is not None:
                    ids.append(token_id)
                else:
                    ids.extend(next(encoded_first) if position == 0 else next(encoded_later))
            batch.append(ids)
        return batch

    def encode_texts(
        self, texts: list[str] | list[list[str]], split_special_tokens: bool = False, pretokenized: bool = False
    ) -> list[EncodedText]:
        """Each text's ids with their character spans and word indices, as transformers' converted
        (Rust) Llama tokenizer gives them: a text's words are the runs between added tokens, each
        added token is a word; `pretokenized` texts are lists of words, each encoded with the dummy
        prefix and spanned within itself."""
        if pretokenized:
            return [self._encode_words(words, split_special_tokens) for words in texts]
        results = []
        for text in texts:
            pieces = [(text, None)] if split_special_tokens else self._split(text)
            encoded = EncodedText([], [], [])
            start = 0
            for word, (piece, token_id) in enumerate(pieces):
                if token_id is not None:
                    encoded.extend(EncodedText([token_id], [(start, start + len(piece))], [word]))
                else:
                    model = self.model if word == 0 else self.model_no_prefix
                    encoded.extend(_spanned(model, piece, start, word))
                start += len(piece)
            results.append(encoded)
        return results

    def _encode_words(self, words: list[str], split_special_tokens: bool) -> EncodedText:
        encoded = EncodedText([], [], [])
        for word, text in enumerate(words):
            part = self.encode_texts([text], split_special_tokens)[0]
            encoded.extend(EncodedText(part.ids, part.offsets, [word] * len(part.ids)))
        return encoded

    def tokenize(self, text: str, split_special_tokens: bool = False) -> list[str]:
        return [self.id_to_token(i) for i in self.encode_batch([text], split_special_tokens)[0]]

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return [self._decode(ids, skip_special_tokens) for ids in batch]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Runs of ordinary ids go to sentencepiece; added tokens are written as their text.

        sentencepiece drops the leading space of what it decodes; like transformers, lamina drops
        only the space at the very start of the output, so a run after an added token keeps it.
        """
        parts: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                text = self.model.decode(run)
                if parts and self.model.id_to_piece(run[0]).startswith("\u2581"):
                    text = " " + text
                parts.append(text)
                run.clear()

        size = self.model.get_piece_size()
        for token_id in ids:
            if token_id in self._special_ids or token_id >= size or self.model.is_control(token_id):
                flush()
                if not (skip_special_tokens and (token_id in self._special_ids or self.model.is_control(token_id))):
                    parts.append(self.id_to_token(token_id) or "")
            else:
                run.append(token_id)
        flush()
        return "".join(parts)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode([self.token_to_id(token) or 0 for token in tokens], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        token_id = self.model.piece_to_id(token)
        if token_id == self.model.unk_id() and token != self.model.id_to_piece(token_id):
            return None
        return token_id

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self._extra:
            return self._extra[token_id]
        if 0 <= token_id < self.model.get_piece_size():
            return self.model.id_to_piece(token_id)
        return None

    @property
    def base_vocab_size(self) -> int:
        return self.model.get_piece_size()

    def __len__(self) -> int:
        return self.model.get_piece_size() + len(self._extra)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.model.id_to_piece(i): i for i in range(self.model.get_piece_size())}
        vocab.update({token: i for i, token in self._extra.items()})
        return vocab

    def add_tokens(self, tokens: list[str], special: bool) -> int:
        added = 0
        for token in tokens:
            token_id = self.token_to_id(token)
            if token_id is None:
                token_id = len(self)
                self._extra[token_id] = token
                added += 1
            self._register(token, token_id, special)
        return added

    def added_tokens(self) -> dict[int, tuple[str, bool]]:
        return {i: (token, i in self._special_ids) for token, i in self._added.items()}

    def save(self, directory: Path, post_processor: dict[str, Any] | None) -> list[str]:
        target = directory / "tokenizer.model"
        if os.path.abspath(target) != os.path.abspath(self.path):
            shutil.copyfile(self.path, target)
        document = unigram_document(self.path)
        if document is None:
            return ["tokenizer.model"]  # transformers converts sentencepiece BPE models itself
        known = {entry["id"] for entry in document["added_tokens"]}
        document["added_tokens"] += [
            added_token(i, token, special) for i, (token, special) in sorted(self.added_tokens().items()) if i not in known
        ]
        document["post_processor"] = post_processor
        (directory / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        return ["tokenizer.model", "tokenizer.json"]


def _spanned(model: sentencepiece.SentencePieceProcessor, text: str, start: int, word: int) -> EncodedText:
    """`text` encoded by `model`, with each piece's characters (shifted by `start`).

    sentencepiece reports byte spans; the bytes of one character split over byte-fallback pieces
    are given whole to the last of them, and lamina, like transformers, gives that character to
    every one of them (and the first character to a lone dummy-prefix piece).
    """
    char_at = {}  # byte offset -> character offset
    position = 0
    for index, char in enumerate(text):
        char_at[position] = index
        position += len(char.encode("utf-8"))
    char_at[position] = len(text)
    proto = model.encode(text, out_type="proto")
    ids, offsets = [], []
    following = (len(text), len(text))
    for piece in reversed(proto.pieces):
        span = (char_at[piece.begin], char_at[piece.end])
        if piece.begin == piece.end and model.is_byte(piece.id):
            span = following
        elif piece.begin == piece.end:
            # a lone dummy-prefix "▁" stands for no character; it is given the first one
            span = (span[0], min(span[0] + 1, len(text)))
        following = span
        ids.append(piece.id)
        offsets.append((span[0] + start, span[1] + start))
    return EncodedText(ids[::-1], offsets[::-1], [word] * len(ids))


def _read_varint(data: bytes, position: int, path: Path) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise TokenizerError(f"{path}: not a valid sentencepiece model (the protobuf ends inside a number)")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC = 1, 2, 3  # ModelProto fields
_ADD_DUMMY_PREFIX = 3  # NormalizerSpec.add_dummy_prefix


def _proto_fields(proto: bytes, path: Path) -> list[tuple[int, int, int, Any]]:
    """(field number, wire type, offset of the field, value) of each field of a protobuf message;
    the value is an int for varints and fixed-width fields, the raw bytes for length-delimited ones."""
    fields = []
    position = 0
    while position < len(proto):
        tag, start = _read_varint(proto, position, path)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, end = _read_varint(proto, start, path)
        elif wire_type in (1, 5):
            end = start + (8 if wire_type == 1 else 4)
            value = proto[start:end]
        elif wire_type == 2:
            length, start = _read_varint(proto, start, path)
            end = start + length
            value = proto[start:end]
        else:
            raise TokenizerError(f"{path}: not a valid sentencepiece model (protobuf wire type {wire_type})")
        if end > len(proto):
            raise TokenizerError(f"{path}: not a valid sentencepiece model (truncated at byte {len(proto)})")
        fields.append((field, wire_type, position, value))
        position = end
    return fields


def with_dummy_prefix(proto: bytes, add_dummy_prefix: bool, path: Path) -> bytes:
    """The serialized sentencepiece model with `normalizer_spec.add_dummy_prefix` set.

    sentencepiece's Python API cannot switch the dummy prefix per call, so lamina keeps a second
    processor whose model says so. A scalar repeated in a protobuf message takes its last value,
    so appending the field to the normalizer spec overrides it without parsing the rest.
    """
    out = bytearray()
    fields = _proto_fields(proto, path)
    for index, (field, wire_type, position, value) in enumerate(fields):
        end = fields[index + 1][2] if index + 1 < len(fields) else len(proto)
        if field == _NORMALIZER_SPEC and wire_type == 2:
            body = value + _varint(_ADD_DUMMY_PREFIX << 3) + bytes([int(add_dummy_prefix)])
            out += _varint(field << 3 | 2) + _varint(len(body)) + body
        else:
            out += proto[position:end]
    return bytes(out)


def unigram_document(path: Path) -> dict[str, Any] | None:
    """A sentencepiece unigram model as a `tokenizers` document (None for a BPE model), so that
    transformers, which cannot convert unigram models through its Llama class, loads what
    lamina saves.

    Mirrors sentencepiece: the model's precompiled normalization, removal of extra whitespace,
    spaces as "▁" with the dummy prefix in front, Viterbi over the whole text, byte fallback.
    """
    proto = path.read_bytes()
    pieces: list[tuple[str, float, int]] = []
    normalizer_spec: dict[int, Any] = {}
    trainer_spec: dict[int, Any] = {}
    for field, _, _, value in _proto_fields(proto, path):
        if field == _PIECES:
            piece = {f: v for f, _, _, v in _proto_fields(value, path)}
            score = struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0
            pieces.append((piece.get(1, b"").decode("utf-8"), score, piece.get(3, 1)))
        elif field == _NORMALIZER_SPEC:
            normalizer_spec = {f: v for f, _, _, v in _proto_fields(value, path)}
        elif field == _TRAINER_SPEC:
            trainer_spec = {f: v for f, _, _, v in _proto_fields(value, path)}
    unigram, unknown, control, user_defined = 1, 2, 3, 4  # TrainerSpec.model_type / SentencePiece.Type
    if trainer_spec.get(3, unigram) != unigram:
        return None
    steps: list[dict[str, Any]] = []
    if normalizer_spec.get(2):
        steps.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(normalizer_spec[2]).decode()})
    if normalizer_spec.get(4, 1):  # remove_extra_whitespaces
        steps += [
            {"type": "Strip", "strip_left": True, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]
    model = {
        "type": "Unigram",
        "unk_id": next((i for i, (_, _, kind) in enumerate(pieces) if kind == unknown), 0),
        "vocab": [[piece, score] for piece, score, _ in pieces],
        "byte_fallback": bool(trainer_spec.get(35, 0)),  # TrainerSpec.byte_fallback
    }
    added = [
        added_token(i, piece, special=kind != user_defined)
        for i, (piece, _, kind) in enumerate(pieces)
        if kind in (unknown, control, user_defined)
    ]
    # sentencepiece strips the text before adding the dummy prefix, so the prefix goes in front
    # of every piece ("always"): "first" would look for the text's first character, stripped away
    prefix = bool(normalizer_spec.get(_ADD_DUMMY_PREFIX, 1))
    return metaspace_document(model, added, dummy_prefix=prefix, prepend_scheme="always", normalizers=steps)

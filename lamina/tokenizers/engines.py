"""The engines that turn text into ids: the Rust `tokenizers` library, sentencepiece, and
sentencepiece in XLM-R's id layout (mLUKE's words).

Each takes text to native code, so no merge loop ever runs in Python. An engine knows
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
                    encoded.extend(spanned(model, piece, start, word))
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


class XLMRobertaPieces:
    """A sentencepiece model in XLM-R / fairseq's id layout (mLUKE's words): ids 0-3 are
    `<s> <pad> </s> <unk>`, sentencepiece piece `i` (from 3 on) is id `i + 1`, and `<mask>` follows
    the last piece. Added tokens are matched whole in the text, each swallowing the whitespace on
    the side its `SpecialToken` says; the text between them is encoded with sentencepiece's dummy
    prefix, as transformers' slow XLM-R tokenizer does."""

    kind = "sentencepiece (XLM-R ids)"
    decode_options = ("spaces_between_special_tokens",)
    continuing_subword_prefix = None
    file_name = "sentencepiece.bpe.model"
    # the fairseq ids of sentencepiece's first pieces; the other pieces move up by one
    FAIRSEQ_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    OFFSET = 1

    def __init__(self, vocab_file: str, sp_model_kwargs: dict[str, Any], saved: Mapping[int | str, Any],
                 flags: Mapping[str, SpecialToken]) -> None:
        self.vocab_file = vocab_file
        self.sp_model_kwargs = sp_model_kwargs
        self.sp_model = _load_xlmr_sentencepiece(vocab_file, sp_model_kwargs)
        self.fairseq_tokens_to_ids = {**self.FAIRSEQ_IDS, "<mask>": len(self.sp_model) + self.OFFSET}
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
        self._pattern = re.compile(alternatives) if alternatives else None

    def _piece_id(self, token: str) -> int | None:
        """The id of `token` in the fairseq / sentencepiece vocabulary, None when it has none."""
        if token in self.fairseq_tokens_to_ids:
            return self.fairseq_tokens_to_ids[token]
        piece_id = self.sp_model.piece_to_id(token)
        return piece_id + self.OFFSET if piece_id else None

    @property
    def base_vocab_size(self) -> int:
        """Sentencepiece pieces, the fairseq offset and `<mask>` (added tokens not counted)."""
        return len(self.sp_model) + self.OFFSET + 1

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
        return self.sp_model.id_to_piece(index - self.OFFSET) if 0 <= index < self.base_vocab_size else None

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.id_to_token(index): index for index in range(self.base_vocab_size)}
        vocab.update(self.added_ids)
        return vocab

    # ---- encoding -------------------------------------------------------------------------
    def encode_text(
        self, text: str, cuts: Sequence[int] = (), split_special_tokens: bool = False
    ) -> tuple[EncodedText, dict[int, int]]:
        """`text` encoded in parts cut at the character positions `cuts`, with each token's
        characters and word (words end at whitespace and around added tokens, as transformers'
        fast XLM-R tokenizer splits them); and, per cut, the index of the first token after it.

        A space just before a cut moves to the part after it, so the word after the cut keeps its
        word-start marker, as in the text encoded whole.
        """
        encoded = EncodedText([], [], [])
        token_at: dict[int, int] = {}
        consumed = 0
        for boundary in sorted(set(cuts)):
            cut = boundary - 1 if boundary > 0 and text[boundary - 1] == " " else boundary
            if cut != consumed:
                encoded.extend(self._encode_part(text[consumed:cut], consumed, split_special_tokens))
                consumed = cut
            token_at[boundary] = len(encoded)
        encoded.extend(self._encode_part(text[consumed:], consumed, split_special_tokens))
        encoded.words = self._words(text, encoded)
        return encoded, token_at

    def encode_texts(
        self, texts: list[str] | list[list[str]], split_special_tokens: bool = False, pretokenized: bool = False
    ) -> list[EncodedText]:
        """Each text's ids with their characters and words; `pretokenized` texts are lists of
        words, each encoded on its own and spanned within itself."""
        if not pretokenized:
            return [self.encode_text(text, (), split_special_tokens)[0] for text in texts]
        results = []
        for words in texts:
            encoded = EncodedText([], [], [])
            for word, text in enumerate(words):
                part = self._encode_part(text, 0, split_special_tokens)
                encoded.extend(EncodedText(part.ids, part.offsets, [word] * len(part)))
            results.append(encoded)
        return results

    def _runs(self, text: str, split_special_tokens: bool) -> list[tuple[str, int, int | None]]:
        """`text` as (run, its start, None) and (added token, its start, id) parts, each run
        stripped of the whitespace its neighbouring added tokens swallow."""
        runs: list[tuple[str, int, int | None]] = []
        position = 0
        for match in [] if split_special_tokens or self._pattern is None else self._pattern.finditer(text):
            runs.append((text[position : match.start()], position, None))
            runs.append((match.group(), match.start(), self.added_ids[match.group()]))
            position = match.end()
        runs.append((text[position:], position, None))
        for index, (_, _, token_id) in enumerate(runs):
            token = None if token_id is None else self.added[token_id]
            if token is not None and token.rstrip:
                after, after_begin, _ = runs[index + 1]
                stripped = after.lstrip()
                runs[index + 1] = (stripped, after_begin + len(after) - len(stripped), None)
            if token is not None and token.lstrip:
                before, before_begin, _ = runs[index - 1]
                runs[index - 1] = (before.rstrip(), before_begin, None)
        return runs

    def _encode_part(self, text: str, start: int, split_special_tokens: bool) -> EncodedText:
        """`text` (found at character `start` of its whole) with added tokens kept whole and the
        runs between them given to sentencepiece; offsets are in the whole text, words unset."""
        encoded = EncodedText([], [], [])
        unk = self.FAIRSEQ_IDS["<unk>"]
        for run, begin, token_id in self._runs(text, split_special_tokens):
            if token_id is not None:
                encoded.extend(EncodedText([token_id], [(start + begin, start + begin + len(run))], [None]))
            elif run:
                pieces = spanned(self.sp_model, run, start + begin, 0)
                pieces.ids = [piece_id + self.OFFSET if piece_id else unk for piece_id in pieces.ids]
                pieces.offsets = [_past_spaces(run, start + begin, span) for span in pieces.offsets]
                encoded.extend(pieces)
        return encoded

    @staticmethod
    def _words(text: str, encoded: EncodedText) -> list[int]:
        """Each token's word: a new one after whitespace, and at and after every added token
        (the tokens `_encode_part` gives no word)."""
        words: list[int] = []
        previous_end, previous_added = None, False
        for (start, end), word in zip(encoded.offsets, encoded.words):
            added = word is None
            gap = text[previous_end:start] if previous_end is not None else ""
            new = previous_end is None or added or previous_added or any(char.isspace() for char in gap)
            words.append(words[-1] + new if words else 0)
            previous_end, previous_added = end, added
        return words

    def tokenize(self, text: str, split_special_tokens: bool = False) -> list[str]:
        """Sentencepiece pieces of `text` (unknown ones as their text), with added tokens (`<mask>`,
        `<ent>`, …) kept whole."""
        pieces: list[str] = []
        for run, _, token_id in self._runs(text, split_special_tokens):
            pieces += [run] if token_id is not None else self.sp_model.encode(run, out_type=str) if run else []
        return pieces

    # ---- decoding -------------------------------------------------------------------------
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join sentencepiece pieces, turning the word-start marker back into spaces."""
        return "".join(tokens).replace("\u2581", " ").strip()

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

    def decode_batch(
        self, batch: list[list[int]], skip_special_tokens: bool, spaces_between_special_tokens: bool = True
    ) -> list[str]:
        skip = set(self.added) if skip_special_tokens else set()
        return [self.decode(ids, skip, spaces_between_special_tokens) for ids in batch]

    # ---- saving ---------------------------------------------------------------------------
    def save(self, directory: Path, post_processor: dict[str, Any] | None) -> list[str]:
        """Write the sentencepiece model (from the loaded model when its file is gone) and
        `added_tokens.json`, the tokens past the vocabulary; the template is XLM-R's own, so
        `post_processor` is not written."""
        written = [self.save_model(directory / self.file_name)]
        added = {token.content: index for index, token in self.added.items() if index >= self.base_vocab_size}
        path = directory / "added_tokens.json"
        path.write_text(json.dumps(added, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        return [*written, path.name]

    def save_model(self, path: Path) -> str:
        """Write the sentencepiece model to `path`; returns its name."""
        if Path(self.vocab_file).is_file():
            if Path(self.vocab_file).resolve() != path.resolve():
                shutil.copyfile(self.vocab_file, path)
        else:
            path.write_bytes(self.sp_model.serialized_model_proto())
        return path.name

    def __getstate__(self) -> dict[str, Any]:
        # the sentencepiece processor is rebuilt from its serialised model (DataLoader workers)
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        proto = state.pop("sp_model")
        self.__dict__.update(state)
        self.sp_model = sentencepiece.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)


def _past_spaces(run: str, run_start: int, span: tuple[int, int]) -> tuple[int, int]:
    """`span` (characters of the whole text; `run` starts at `run_start`) without its leading
    whitespace, which transformers' fast XLM-R tokenizer splits off before its pieces; a piece of
    whitespace alone (a lone word-start marker) gets the character after it."""
    start, end = span
    while start < end and run[start - run_start].isspace():
        start += 1
    return (start, end) if start < end else (start, min(start + 1, run_start + len(run)))


def _load_xlmr_sentencepiece(path: str, kwargs: dict[str, Any]) -> sentencepiece.SentencePieceProcessor:
    if not Path(path).is_file():
        raise TokenizerError(f"{path}: sentencepiece model not found")
    processor = sentencepiece.SentencePieceProcessor(**kwargs)
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


def spanned(model: sentencepiece.SentencePieceProcessor, text: str, start: int, word: int) -> EncodedText:
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

"""Tokenizers stored inside GGUF files (llama.cpp's `tokenizer.ggml.*` metadata).

A GGUF carries the vocabulary, the merges, the token types, the special token ids, the BOS/EOS
flags and the chat template. `from_gguf` rebuilds the tokenizer they describe as a `tokenizers`
document: byte-level BPE for `tokenizer.ggml.model == "gpt2"`, sentencepiece-style byte-fallback
BPE for `"llama"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoints.gguf import read_gguf  # one bounds-checked header reader for models and tokenizers
from ..config import is_integer
from ..errors import CheckpointError, TokenizerError, UnsupportedError
from .engines import RustEngine
from .formats import added_token, bpe_model, byte_level_document, byte_to_unicode, bytes_to_token, metaspace_document

# llama.cpp token types
_CONTROL, _USER_DEFINED = 3, 4

# pre-tokenizer regexes of the `tokenizer.ggml.pre` names whose split differs from GPT-2's
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_PATTERNS = {
    "llama3": _LLAMA3_PATTERN,
    "llama-v3": _LLAMA3_PATTERN,
    "llama-bpe": _LLAMA3_PATTERN,
    "smaug-bpe": _LLAMA3_PATTERN,
    "tekken": _TEKKEN_PATTERN,
}


def read_gguf_tokenizer(source: str | os.PathLike | Any) -> tuple[dict[str, Any], str]:
    """(the `tokenizer.*` metadata, a name for messages) of a GGUF path, an open
    `gguf.GGUFReader`, or any parsed file with a `metadata` dict."""
    if hasattr(source, "fields"):
        metadata = {key: field.contents() for key, field in source.fields.items() if key.startswith("tokenizer.")}
        return metadata, str(getattr(source, "path", "GGUF file"))
    if isinstance(getattr(source, "metadata", None), dict):
        return source.metadata, str(getattr(source, "path", "GGUF file"))
    path = Path(source)
    if not path.is_file():
        raise TokenizerError(f"{path}: no such GGUF file")
    try:
        return read_gguf(path).metadata, str(path)
    except CheckpointError as err:
        raise TokenizerError(str(err)) from None
    except OSError as err:
        raise TokenizerError(f"{path}: cannot read the GGUF file ({err.strerror})") from None


def gguf_tokenizer_parts(
    source: str | os.PathLike | Any, overrides: dict[str, Any]
) -> tuple[str, RustEngine, dict[str, Any], str]:
    """What the tokenizer a GGUF file (a path or an open `gguf.GGUFReader`) embeds is built from:
    its default class (by name), the engine, tokenizer_config.json-style settings (`overrides` on top of what
    the file says) and a name for messages. `files.from_gguf` builds it."""
    metadata, name = read_gguf_tokenizer(source)
    kind = _field(metadata, "tokenizer.ggml.model", name, "a string", _is_str)
    tokens = _field(metadata, "tokenizer.ggml.tokens", name, "a list of strings", _is_strings)
    if kind is None or not tokens:
        raise TokenizerError(f"{name}: no tokenizer in the GGUF metadata (tokenizer.ggml.model / tokens missing)")
    types = _field(metadata, "tokenizer.ggml.token_type", name, f"a list of {len(tokens)} integers",
                   lambda value: _is_list_of(value, is_integer) and len(value) == len(tokens)) or [1] * len(tokens)
    _field(metadata, "tokenizer.ggml.merges", name, "a list of strings", _is_strings)
    _field(metadata, "tokenizer.ggml.scores", name, f"a list of {len(tokens)} numbers",
           lambda value: _is_list_of(value, _is_number) and len(value) == len(tokens))
    _field(metadata, "tokenizer.ggml.pre", name, "a string", _is_str)
    _field(metadata, "tokenizer.chat_template", name, "a string", _is_str)
    for flag in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        _field(metadata, f"tokenizer.ggml.{flag}", name, "a boolean", lambda value: isinstance(value, bool))
    for key in _TOKEN_ID_KEYS.values():
        _field(metadata, f"tokenizer.ggml.{key}", name, f"a token id in [0, {len(tokens)})",
               lambda value: is_integer(value) and 0 <= value < len(tokens))
    if kind == "gpt2":
        document = _byte_level(metadata, tokens, types, name)
        default_class, add_bos = "GPT2Tokenizer", False
    elif kind == "llama":
        document = _sentencepiece_bpe(metadata, tokens, types, name)
        default_class, add_bos = "LlamaTokenizer", True
    else:
        raise UnsupportedError(f"{name}: GGUF tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')")
    config: dict[str, Any] = {
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
    }
    for role, key in _TOKEN_ID_KEYS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        config[f"{role}_token"] = None if token_id is None else tokens[token_id]
    if metadata.get("tokenizer.chat_template") is not None:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    config.update(overrides)
    return default_class, RustEngine(document, name), config, name


_TOKEN_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_list_of(value: Any, check: Any) -> bool:
    return isinstance(value, list) and all(check(item) for item in value)


def _is_strings(value: Any) -> bool:
    return _is_list_of(value, _is_str)


def _field(metadata: dict[str, Any], key: str, name: str, expected: str, valid: Any) -> Any:
    """`metadata[key]` (None when absent), checked before use: any GGUF value may have any type."""
    value = metadata.get(key)
    if value is not None and not valid(value):
        raise TokenizerError(f"{name}: {key}: expected {expected}, found {value!r:.80}")
    return value


def _byte_level(metadata: dict[str, Any], tokens: list[str], types: list[int], name: str) -> dict[str, Any]:
    alphabet = set(byte_to_unicode().values())
    # llama.cpp writes a few tokens (special ones, mostly) as plain text; spell those in bytes
    vocab = {token if set(token) <= alphabet else bytes_to_token(token.encode("utf-8")): i for i, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges") or []]
    if not merges:
        raise TokenizerError(f"{name}: a 'gpt2' GGUF tokenizer needs tokenizer.ggml.merges, found none")
    added = [
        added_token(i, token, special=kind == _CONTROL)
        for i, (token, kind) in enumerate(zip(tokens, types))
        # a control token outside the byte alphabet is a llama.cpp labelling slip; it never occurs in text
        if (kind == _CONTROL and set(token) <= alphabet) or kind == _USER_DEFINED
    ]
    pattern = PRE_TOKENIZER_PATTERNS.get(metadata.get("tokenizer.ggml.pre", ""))
    return byte_level_document(vocab, merges, added, pattern=pattern)


def _sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int], name: str) -> dict[str, Any]:
    vocab = {token: i for i, token in enumerate(tokens)}
    if metadata.get("tokenizer.ggml.merges"):
        merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    else:
        scores = metadata.get("tokenizer.ggml.scores")
        if not scores or len(scores) != len(tokens):
            raise TokenizerError(f"{name}: a 'llama' GGUF tokenizer needs tokenizer.ggml.merges or scores for every token")
        merges = merges_from_scores(tokens, scores)
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    model = bpe_model(
        vocab,
        merges,
        unk_token=None if unk_id is None else tokens[int(unk_id)],
        fuse_unk=True,
        byte_fallback=True,
    )
    added = [
        added_token(i, token, special=kind == _CONTROL)
        for i, (token, kind) in enumerate(zip(tokens, types))
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    return metaspace_document(model, added, dummy_prefix=prefix, prepend_scheme="first")


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Sentencepiece BPE keeps no merges: a token's score orders its merge (higher first). Every
    split of a token into two vocabulary tokens is a merge at that token's score."""
    ids = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for token, score in zip(tokens, scores):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-score, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]

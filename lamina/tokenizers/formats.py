"""`tokenizers` documents (the dict a `tokenizer.json` holds) built from other vocabulary formats:
GPT-2's `vocab.json` + `merges.txt`, BERT's WordPiece `vocab.txt`, and Mistral's `tekken.json`.

Each builder returns a document that `engines.RustEngine` runs and `save_pretrained` writes out
as `tokenizer.json`, so transformers loads what lamina saves without any conversion.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import TokenizerError


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, …) are moved to
    code points from 256 up, in byte order, so that no token string holds whitespace or controls.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def bytes_to_token(data: bytes) -> str:
    """`data` spelled in GPT-2's byte alphabet (latin-1 maps each byte to the code point of its value)."""
    return data.decode("latin-1").translate(byte_to_unicode())


def added_token(token_id: int, content: str, special: bool = True) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }


def bpe_model(vocab: dict[str, int], merges: list[tuple[str, str]], **options: Any) -> dict[str, Any]:
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": [list(pair) for pair in merges],
    }
    model.update(options)
    return model


def metaspace_document(
    model: dict[str, Any],
    added_tokens: list[dict[str, Any]],
    dummy_prefix: bool,
    prepend_scheme: str,
    normalizers: list[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A sentencepiece-style document: spaces written "▁", byte-fallback pieces decoded back to
    bytes, and the dummy-prefix space dropped again when decoding (when there is one)."""
    decoders = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": list(added_tokens),
        "normalizer": {"type": "Sequence", "normalizers": list(normalizers)} if normalizers else None,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": "\u2581",
            "prepend_scheme": prepend_scheme if dummy_prefix else "never",
            "split": False,
        },
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model,
    }


def byte_level_document(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    added_tokens: list[dict[str, Any]] = (),
    pattern: str | None = None,
    add_prefix_space: bool = False,
    ignore_merges: bool = False,
) -> dict[str, Any]:
    """A byte-level BPE document: GPT-2's regex (or `pattern`), bytes mapped by `byte_to_unicode`."""
    if pattern is None:
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": True}
    else:
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": False},
            ],
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": list(added_tokens),
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": bpe_model(vocab, merges, ignore_merges=ignore_merges),
    }


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: {what} not found") from None
    # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
    except (OSError, ValueError, RecursionError) as err:
        raise TokenizerError(f"{path}: cannot read the {what} ({type(err).__name__}: {err})") from None


def gpt2_document(vocab_path: Path, merges_path: Path) -> dict[str, Any]:
    """GPT-2's `vocab.json` (token → id) and `merges.txt` (one "a b" pair a line)."""
    vocab = read_json(vocab_path, "vocabulary")
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerError(f"{vocab_path}: expected a JSON object of token → id, found {type(vocab).__name__}")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TokenizerError(f"{merges_path}: cannot read the merges ({err.strerror})") from None
    merges = []
    for number, line in enumerate(lines, 1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{merges_path}: line {number}: expected two tokens separated by a space, found {line!r}")
        merges.append((pair[0], pair[1]))
    return byte_level_document(vocab, merges)


def wordpiece_document(
    vocab_path: Path,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    unk_token: str = "[UNK]",
) -> dict[str, Any]:
    """BERT's WordPiece over a `vocab.txt` (one token a line, the line number is the id), with the
    BERT basic tokenizer: clean-up, optional lower-casing and accent stripping, CJK characters and
    punctuation split off."""
    try:
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
    except OSError as err:
        raise TokenizerError(f"{vocab_path}: cannot read the WordPiece vocabulary ({err.strerror})") from None
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token.rstrip("\r"), index)
    if unk_token not in vocab:
        raise TokenizerError(f"{vocab_path}: the unknown token {unk_token!r} is not in the vocabulary")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": tokenize_chinese_chars,
            "strip_accents": strip_accents,
            "lowercase": do_lower_case,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": unk_token,
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab,
        },
    }


# the special tokens of tekken files that do not list them (mistral_common's v3 layout); the
# rest of the `default_num_special_tokens` slots are filled with `<SPECIAL_{id}>`
TEKKEN_DEFAULT_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip


def tekken_document(path: Path) -> tuple[dict[str, Any], str | None]:
    """Mistral's `tekken.json` as a byte-level BPE document with mistral_common's id layout, and
    the instruct-format version the file states (`config.version`).

    Ids `0 … num_special-1` are the special tokens (each matched whole, and skipped when decoding
    with `skip_special_tokens`); the first `vocab_size - num_special` byte strings of the file
    follow, shifted by `num_special`. tekken is tiktoken-style BPE: a word found whole in the
    vocabulary is one token (`ignore_merges`), otherwise the adjacent pair whose concatenation
    ranks best merges first. `tekken_merges` gives the Rust BPE the merges that reproduce that.
    """
    data = read_json(path, "tekken tokenizer")
    try:
        config = data["config"]
        pattern = config["pattern"]
        num_special = int(config["default_num_special_tokens"])
        vocab_size = int(config["default_vocab_size"])
        entries = data["vocab"]
    except (KeyError, TypeError, ValueError) as err:
        raise TokenizerError(f"{path}: not a tekken tokenizer (missing or malformed {err})") from None
    inner_size = vocab_size - num_special
    if inner_size > len(entries):
        raise TokenizerError(
            f"{path}: config.default_vocab_size {vocab_size} needs {inner_size} vocabulary entries "
            f"after {num_special} special tokens, found {len(entries)}"
        )
    ranks: dict[bytes, int] = {}
    for index, entry in enumerate(entries[:inner_size]):
        try:
            token = base64.b64decode(entry["token_bytes"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise TokenizerError(f"{path}: vocab[{index}]: expected base64 'token_bytes', found {entry!r:.80}") from None
        if entry.get("rank") != index or token in ranks:
            raise TokenizerError(f"{path}: vocab[{index}]: expected a new token of rank {index}, found {entry!r:.80}")
        ranks[token] = index
    specials = _tekken_specials(data.get("special_tokens"), num_special, path)
    vocab = {bytes_to_token(token): rank + num_special for token, rank in ranks.items()}
    clashes = [token for token in specials if token in vocab]
    if clashes:
        raise TokenizerError(f"{path}: special tokens {clashes[:3]} are also ordinary vocabulary entries")
    vocab.update({token: token_id for token_id, token in enumerate(specials)})
    merges = [(bytes_to_token(a), bytes_to_token(b)) for a, b in tekken_merges(ranks)]
    added = [added_token(token_id, token) for token_id, token in enumerate(specials)]
    document = byte_level_document(vocab, merges, added, pattern=pattern, ignore_merges=True)
    return document, config.get("version")


def _tekken_specials(listed: list[dict[str, Any]] | None, num_special: int, path: Path) -> list[str]:
    if listed is None:
        tokens = list(TEKKEN_DEFAULT_SPECIALS)
    else:
        try:
            tokens = [entry["token_str"] for entry in sorted(listed, key=lambda entry: entry["rank"])]
        except (KeyError, TypeError):
            raise TokenizerError(f"{path}: special_tokens: expected entries with 'rank' and 'token_str'") from None
        if [entry["rank"] for entry in sorted(listed, key=lambda entry: entry["rank"])] != list(range(len(tokens))):
            raise TokenizerError(f"{path}: special_tokens: expected ranks 0 … {len(tokens) - 1}")
    if len(tokens) > num_special or len(set(tokens)) != len(tokens):
        raise TokenizerError(
            f"{path}: expected at most {num_special} distinct special tokens, found {len(tokens)} "
            f"({len(set(tokens))} distinct)"
        )
    return tokens + [f"<SPECIAL_{i}>" for i in range(len(tokens), num_special)]


def tekken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges, best first, under which rank-ordered BPE reproduces tiktoken's encoding.

    tiktoken merges, in a word, the adjacent pair whose concatenation has the lowest rank. When a
    token T forms inside a word, the parts left and right of its last merge are exactly the parts
    that the same procedure run on T's bytes alone ends with (nothing outside T's span can change
    the order of merges inside it). So one merge per token — the last merge of tiktoken on its
    own bytes, ranked by the token's rank — gives the Rust BPE the same result. Tokens that
    cannot be built by merging are reachable only as whole words and get no merge.
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        last: tuple[bytes, bytes] | None = None
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and (best_rank is None or pair_rank < best_rank):
                    best, best_rank = i, pair_rank
            if best_rank is None:
                break
            last = (parts[best], parts[best + 1])
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 1 and last is not None:
            merges.append((rank, *last))
    merges.sort()
    return [(a, b) for _, a, b in merges]

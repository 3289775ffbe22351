"""Malformed tokenizer files (GGUF tokenizer metadata, tokenizer_config.json, chat_template.jinja):
a TokenizerError naming the file and the key, never a bare Python exception."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import lamina
from lamina.errors import TokenizerError

_U32, _F32, _STR, _ARR = 4, 6, 8, 9


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, type_id: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", type_id) + payload


def _strings(items: list[str]) -> bytes:
    return struct.pack("<IQ", _STR, len(items)) + b"".join(_string(item) for item in items)


def _u32s(items: list[int]) -> bytes:
    return struct.pack("<IQ", _U32, len(items)) + b"".join(struct.pack("<I", item) for item in items)


TOKENS = ["<unk>", "<s>", "a", "b", "ab"]
LLAMA_TOKENIZER = {
    "tokenizer.ggml.model": _kv("tokenizer.ggml.model", _STR, _string("llama")),
    "tokenizer.ggml.tokens": _kv("tokenizer.ggml.tokens", _ARR, _strings(TOKENS)),
    "tokenizer.ggml.scores": _kv("tokenizer.ggml.scores", _ARR, struct.pack("<IQ5f", _F32, 5, 0, 0, 1, 1, 2)),
}


def _gguf_tokenizer(path: Path, **replaced: tuple[int, bytes]) -> Path:
    """A GGUF holding only a llama tokenizer, with some entries replaced (`key=(type id, payload)`)."""
    entries = dict(LLAMA_TOKENIZER)
    entries.update({key.replace("__", "."): _kv(key.replace("__", "."), *value) for key, value in replaced.items()})
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries.values()))
    return path


def test_well_formed_gguf_tokenizer_loads(tmp_path):
    tokenizer = lamina.AutoTokenizer.from_pretrained(_gguf_tokenizer(tmp_path / "ok.gguf"))
    assert tokenizer.convert_ids_to_tokens([2, 3]) == ["a", "b"]


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.unknown_token_id", (_U32, struct.pack("<I", 99)), r"expected a token id in \[0, 5\), found 99"),
    ("tokenizer.ggml.unknown_token_id", (_STR, _string("x")), r"expected a token id in \[0, 5\), found 'x'"),
    ("tokenizer.ggml.bos_token_id", (_STR, _string("x")), r"expected a token id in \[0, 5\), found 'x'"),
    ("tokenizer.ggml.tokens", (_U32, struct.pack("<I", 3)), "expected a list of strings, found 3"),
    ("tokenizer.ggml.model", (_ARR, _u32s([1])), r"expected a string, found \[1\]"),
    ("tokenizer.ggml.scores", (_ARR, _strings(["a"] * 5)), "expected a list of 5 numbers, found"),
    ("tokenizer.ggml.scores", (_U32, struct.pack("<I", 5)), "expected a list of 5 numbers, found 5"),
    ("tokenizer.ggml.merges", (_ARR, _u32s([1, 2])), r"expected a list of strings, found \[1, 2\]"),
    ("tokenizer.ggml.token_type", (_U32, struct.pack("<I", 3)), "expected a list of 5 integers, found 3"),
    ("tokenizer.ggml.token_type", (_ARR, _u32s([3])), r"expected a list of 5 integers, found \[3\]"),
    ("tokenizer.ggml.pre", (_ARR, _u32s([1])), r"expected a string, found \[1\]"),
    ("tokenizer.ggml.add_space_prefix", (_STR, _string("no")), "expected a boolean, found 'no'"),
])
def test_gguf_tokenizer_metadata_of_the_wrong_type_names_the_key(tmp_path, key, value, message):
    path = _gguf_tokenizer(tmp_path / "tok.gguf", **{key.replace(".", "__"): value})
    with pytest.raises(TokenizerError, match=rf"tok\.gguf: {key}: {message}"):
        lamina.AutoTokenizer.from_pretrained(path)


def _bert_dir(tmp_path: Path, config: dict | None = None, files: dict[str, bytes] | None = None) -> Path:
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for name, data in (files or {}).items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("config, message", [
    ({"added_tokens_decoder": [1]}, r"added_tokens_decoder: expected an object of id → token, found \[1\]"),
    ({"added_tokens_decoder": {"x": {"content": "z"}}}, r"added_tokens_decoder: expected token ids \(integers >= 0\) as keys, found 'x'"),
    ({"added_tokens_decoder": {"-1": {"content": "z"}}}, r"added_tokens_decoder: expected token ids \(integers >= 0\) as keys, found '-1'"),
    ({"added_tokens_decoder": {"9" * 23: {"content": "z"}}}, r"added_tokens_decoder: expected token ids \(integers >= 0\) as keys"),
    ({"added_tokens_decoder": {"7": "z"}}, r"added_tokens_decoder\['7'\]: expected an object with a string 'content', found 'z'"),
    ({"added_tokens_decoder": {"7": {}}}, r"added_tokens_decoder\['7'\]: expected an object with a string 'content', found \{\}"),
    ({"model_max_length": "x"}, "model_max_length: expected a positive number, found 'x'"),
    ({"additional_special_tokens": 5}, "additional_special_tokens: expected a list of tokens, found 5"),
    ({"chat_template": [1]}, r"chat_template: expected a string or a list of \{'name': ..., 'template': ...\}, found \[1\]"),
    ({"model_input_names": 5}, "model_input_names: expected a list of strings, found 5"),
])
def test_malformed_tokenizer_config_names_the_key(tmp_path, config, message):
    with pytest.raises(TokenizerError, match=rf"tokenizer_config\.json: {message}"):
        lamina.AutoTokenizer.from_pretrained(_bert_dir(tmp_path, config))


def test_chat_template_file_that_is_not_utf8_names_the_file(tmp_path):
    path = _bert_dir(tmp_path, {}, {"chat_template.jinja": b"\xff\xfe{{ messages }}"})
    with pytest.raises(TokenizerError, match=r"chat_template\.jinja: not UTF-8 text"):
        lamina.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' + "9" * 5000 + "}"])
def test_deep_or_huge_json_in_a_tokenizer_file_is_a_tokenizer_error(tmp_path, text):
    from lamina.tokenizers.formats import read_json

    (tmp_path / "vocab.json").write_text(text)
    with pytest.raises(TokenizerError, match="vocab.json: cannot read the vocabulary"):
        read_json(tmp_path / "vocab.json", "vocabulary")


def _word_level_dir(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.fixture
def default_recursion_limit():
    """Python's default recursion limit, which a library imported by an earlier test may have raised."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(limit)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_tokenizer_files_are_a_tokenizer_error(tmp_path, name, depth, default_recursion_limit):
    directory = _word_level_dir(tmp_path)
    (directory / name).write_text('{"model": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(TokenizerError, match=rf"{name}: cannot read the .*RecursionError"):
        lamina.AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_nested_special_token_names_the_key(tmp_path, name):
    directory = _word_level_dir(tmp_path)
    (directory / name).write_text('{"bos_token": ' + "[" * 900 + "]" * 900 + "}")
    with pytest.raises(TokenizerError, match=r"bos_token: expected a special token as a string or \{'content': ...\}"):
        lamina.AutoTokenizer.from_pretrained(directory)


def test_a_vocabulary_without_its_unknown_token_is_a_tokenizer_error_when_encoding(tmp_path):
    directory = _word_level_dir(tmp_path)
    document = json.loads((directory / "tokenizer.json").read_text())
    document["model"]["vocab"] = {"a": 0, "b": 1}  # "[UNK]" named as the unknown token, but not in it
    (directory / "tokenizer.json").write_text(json.dumps(document))
    tokenizer = lamina.AutoTokenizer.from_pretrained(directory)
    assert tokenizer("b")["input_ids"] == [1]
    for call in (tokenizer, tokenizer.tokenize):
        with pytest.raises(TokenizerError, match=r"tokenizer\.json: the tokenizer cannot encode this text .*UNK"):
            call("c")


@pytest.mark.parametrize("post_processor", [10**30, "x", {"type": "Sequence", "processors": 5},
                                            {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "C"}}]},
                                            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": 3, "type_id": 0}}],
                                             "pair": []}])  # fmt: skip
def test_a_malformed_post_processor_names_the_file(tmp_path, post_processor):
    directory = _word_level_dir(tmp_path)
    document = json.loads((directory / "tokenizer.json").read_text())
    document["post_processor"] = post_processor
    (directory / "tokenizer.json").write_text(json.dumps(document))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: post_processor: expected"):
        lamina.AutoTokenizer.from_pretrained(directory)

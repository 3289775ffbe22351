"""The JSON automaton held to Python's `json` module: every prefix of a valid object is accepted
and only complete objects are done; on random mutations of valid texts it accepts exactly what
`json.loads` accepts as an object, and every prefix it accepts can still be completed into one.
Then schemas, the vocabulary's texts (a real sentencepiece tokenizer), the masks, and `generate`
with `JsonLogitsProcessor`."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

import lamina
from lamina.errors import InputError
from lamina.generation.json_constraint import (
    DONE,
    JSON_OBJECT,
    MAX_DIGITS,
    MAX_EXPONENT_DIGITS,
    MAX_WHITESPACE,
    JsonConstraint,
    JsonLogitsProcessor,
    TokenTexts,
    feed,
    read_schema,
    start,
)

ALPHABET = '{}[]":, \n\t-+.0123456789eEtrufalsnx\\/ué\x01'
# tried in order to finish a prefix: whatever state it is in, one of them moves it towards the end
FINISHERS = '"}]0:,ulrease{'


def state_of(text: str, schema=JSON_OBJECT):
    return feed(start(schema), text)


def done(text: str, schema=JSON_OBJECT) -> bool:
    state = state_of(text, schema)
    return state is not None and state.mode == DONE


def is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["string", "int", "float", "bool", "null"] + (["object", "array"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "object":
        return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == "array":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "string":
        return random_string(rng)
    if kind == "int":
        return rng.randint(-10**12, 10**12)
    if kind == "float":
        return rng.choice([rng.uniform(-1e3, 1e3), rng.uniform(-1, 1) * 10.0 ** rng.randint(-30, 30)])
    return rng.choice([True, False, None])


def random_string(rng: random.Random) -> str:
    return "".join(rng.choice('ab "\\\n\té日😀/\x07') for _ in range(rng.randint(0, 6)))


def random_text(rng: random.Random) -> str:
    value = {random_string(rng): random_value(rng) for _ in range(rng.randint(0, 4))}
    return json.dumps(value, indent=rng.choice([None, 1, 2, "\t"]), ensure_ascii=rng.random() < 0.5,
                      separators=rng.choice([None, (",", ":"), (" , ", " : ")]))


def within_bounds(text: str) -> bool:
    """No whitespace run, digit run or exponent longer than the automaton allows."""
    return not re.search(rf"\s{{{MAX_WHITESPACE + 1},}}|\d{{{MAX_DIGITS + 1},}}|[eE][-+]?\d{{{MAX_EXPONENT_DIGITS + 1}}}",
                         text)


def longest_accepted(text: str) -> str:
    state, end = start(JSON_OBJECT), 0
    while end < len(text) and (state := feed(state, text[end])) is not None:
        end += 1
    return text[:end]


def complete(text: str) -> str:
    """`text` and the characters that finish it, each the first of FINISHERS the automaton takes."""
    state = state_of(text)
    while state.mode != DONE:
        state, char = next((feed(state, c), c) for c in FINISHERS if feed(state, c) is not None)
        text += char
    return text


def test_every_prefix_of_a_valid_object_is_accepted_and_only_the_whole_is_done():
    rng = random.Random(0)
    for _ in range(300):
        text = random_text(rng)
        assert within_bounds(text)
        state = start(JSON_OBJECT)
        for end, char in enumerate(text):
            assert state is not None and state.mode != DONE, (text, end)
            state = feed(state, char)
        assert state is not None and state.mode == DONE, text


def test_accepts_exactly_what_json_loads_accepts_as_an_object():
    rng = random.Random(1)
    checked = valid = 0
    for _ in range(2000):
        chars = list(random_text(rng))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            operation = rng.choice(["insert", "delete", "replace"])
            if operation == "insert":
                chars.insert(at, rng.choice(ALPHABET))
            elif at < len(chars):
                if operation == "delete":
                    del chars[at]
                else:
                    chars[at] = rng.choice(ALPHABET)
        text = "".join(chars)
        if not within_bounds(text):
            continue
        checked += 1
        valid += is_object(text)
        assert done(text) == (is_object(text) and text[-1:] not in " \t\n\r"), text
        prefix = longest_accepted(text)
        assert is_object(complete(prefix)), prefix
    assert checked > 1600 and 0.1 < valid / checked < 0.9  # both sides of the question are asked


@pytest.mark.parametrize("text, accepted", [
    ('{"a": "\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uABCD"}', True),
    ('{"a": "\\x"}', False), ('{"a": "\\u12G4"}', False), ('{"a": "\x1f"}', False), ('{"a": "\t"}', False),
    ('{"日本": "😀"}', True),
    ('{"a": 0, "b": -0.5, "c": 1e5, "d": 2E-3, "e": -12.5e+10}', True),
    ('{"a": 01}', False), ('{"a": -}', False), ('{"a": 1.}', False), ('{"a": .5}', False), ('{"a": +1}', False),
    ('{"a": 1e}', False), ('{"a": 1e+}', False), ('{"a": 0x1}', False),
    ('{"a": [true, false, null, [], {}, [[{"b": []}]]]}', True),
    ('{"a": tru}', False), ('{"a": nul}', False), ('{"a": True}', False),
    ('{"a": 1,}', False), ('{"a": [1,]}', False), ('{,}', False), ('{"a" 1}', False), ('{"a": 1]', False),
    ('[1]', False), ('"x"', False), ('1', False), ('{} ', False), ('{}{}', False),
    (' \n\t{ "a" :\n 1 } ', False), (' \n\t{ "a" :\n 1 }', True),
])
def test_cases(text, accepted):
    assert done(text) == accepted
    if not text.endswith(" "):  # json.loads takes whitespace after the value; lamina then wants the end token
        assert is_object(text) == accepted


def test_bounds_on_whitespace_and_digits_keep_decoding_moving():
    assert done("{" + " " * MAX_WHITESPACE + "}") and state_of("{" + " " * (MAX_WHITESPACE + 1)) is None
    assert done('{"a": "' + " " * 100 + '"}')  # inside strings whitespace is content
    assert done('{"a": ' + "9" * MAX_DIGITS + "}") and state_of('{"a": ' + "9" * (MAX_DIGITS + 1)) is None
    assert done('{"a": 1e999}') and state_of('{"a": 1e9999') is None


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "annotations are fine"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "nick": {"type": ["string", "null"]},
        "where": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("text, accepted", [
    ('{"name": "Ada", "age": 36}', True),
    ('{"age": 36, "name": "Ada", "score": 1.5e3, "tags": ["a", "b"], "nick": null, "where": {"city": "L"}}', True),
    ('{"name": "Ada"}', False), ('{"name": "Ada", "age": 3.5}', False), ('{"name": "Ada", "age": "3"}', False),
    ('{"name": "Ada", "age": 1, "other": 1}', False), ('{"name": "Ada", "name": "B", "age": 1}', False),
    ('{"name": 1, "age": 1}', False), ('{"name": "A", "age": 1, "tags": [1]}', False),
    ('{"name": "A", "age": 1, "nick": true}', False), ('{"name": "A", "age": 1, "where": {}}', False),
    ('{"name": "A", "age": 1, "where": {"city": "x", "zip": 1}}', False),
    ('{"name": "A", "age": 1, "score": 7}', True), ('{"name": "A", "age": 1,}', False),
])
def test_schema(text, accepted):
    assert done(text, read_schema(SCHEMA)) == accepted


def test_schema_prefixes_stop_where_no_declared_key_fits():
    schema = read_schema(SCHEMA)
    assert state_of('{"na', schema) is not None and state_of('{"nx', schema) is None
    # once every declared key is used, no comma may follow
    full = read_schema({"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": False})
    assert state_of('{"a": null', full) is not None and state_of('{"a": null,', full) is None
    assert done("{}", full) and state_of('{"', read_schema({"type": "object", "additionalProperties": False})) is None
    # other keys are allowed unless additionalProperties is false, with any value
    loose = read_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert done('{"b": [1, {"c": null}], "a": 2}', loose) and not done('{"a": "x"}', loose)
    # a schema without a type takes any value
    untyped = read_schema({"type": "object", "properties": {"x": {"description": "anything"}}})
    assert done('{"x": [1, "a", {"b": null}]}', untyped) and done('{"x": "a"}', untyped)


@pytest.mark.parametrize("schema, message", [
    ({"type": "array"}, "root must have 'type': 'object'"), ({}, "root must have 'type': 'object', found None"),
    ({"type": "object", "properties": {"a": {"type": "string", "enum": ["x"]}}}, r"properties\.a: unsupported .*enum"),
    ({"type": "object", "properties": {"a": {"type": "date"}}}, r"properties\.a\.type: expected one of"),
    ({"type": "object", "required": ["b"], "properties": {}}, r"schema\.required: expected a list of names"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties: expected true or false"),
    ({"type": "object", "properties": {"é": {"type": "string"}}}, "printable ASCII"),
    ({"type": "object", "anyOf": []}, r"unsupported keyword\(s\) \['anyOf'\]; supported: 'type'"),
])
def test_unsupported_schemas_are_refused_naming_the_place(schema, message):
    with pytest.raises(InputError, match=message):
        read_schema(schema)


def _vocabulary(texts: list[str]) -> TokenTexts:
    return TokenTexts(["", "", ""] + texts)  # 0-2 special: pad, bos, eos


VOCABULARY = _vocabulary([*'{}[]":,-.0123456789eEtrufalsn\\ ', '{"', '"a"', "true", "abc"])


def _logits(order: list[str]) -> torch.Tensor:
    """Logits ranking the tokens of `order` (texts) first, in that order."""
    logits = torch.zeros(len(VOCABULARY.texts))
    for rank, text in enumerate(order):
        logits[VOCABULARY.texts.index(text)] = 100.0 - rank
    return logits


def test_greedy_mask_keeps_the_first_accepted_and_sampling_every_accepted_among_the_top():
    constraint = JsonConstraint(VOCABULARY, [2])
    assert constraint.greedy(_logits(["abc", "true", "{\"", "{", " "])) == VOCABULARY.texts.index('{"')
    sampled = constraint.mask(_logits(["abc", "true", "{\"", "{", " "]))
    kept = {VOCABULARY.texts[i] for i in torch.isfinite(sampled).nonzero().flatten().tolist()}
    assert kept == {'{"', "{", " "}
    assert sampled[VOCABULARY.texts.index("{")] == 97.0  # the logits themselves are kept
    again = constraint.mask(_logits(["true", "{"]))  # the buffer's earlier tokens are masked again
    assert {VOCABULARY.texts[i] for i in torch.isfinite(again).nonzero().flatten().tolist()} == {"{", " ", '{"'}
    assert again[VOCABULARY.texts.index('{"')] == 0.0
    # beyond the top candidates, the most likely accepted token is found
    assert constraint.advance(VOCABULARY.texts.index("{")) and constraint.advance(VOCABULARY.texts.index('"a"'))
    assert constraint.allowed(_logits(["{", "}", "abc", ":"]), candidates=1) == [VOCABULARY.texts.index(":")]


def test_logits_without_an_accepted_token_raise_rather_than_loop():
    with pytest.raises(InputError, match="no token of the vocabulary continues the JSON text"):
        JsonConstraint(VOCABULARY, [2]).greedy(torch.zeros(3))  # only the special tokens' logits


def test_after_the_object_closes_only_the_end_tokens_are_allowed():
    constraint = JsonConstraint(VOCABULARY, [2, 1])
    for text in ["{", '"a"', ":", "true", "}"]:
        assert constraint.advance(VOCABULARY.texts.index(text))
    assert constraint.done
    assert torch.isfinite(constraint.mask(_logits(["}", " "]))).nonzero().flatten().tolist() == [1, 2]
    assert constraint.greedy(_logits(["}", " "])) == 2
    assert not constraint.advance(VOCABULARY.texts.index(" ")) and constraint.advance(2)


def test_a_vocabulary_without_needed_characters_or_an_end_token_is_refused():
    with pytest.raises(InputError, match=r"needs a token for each of \['n'\] alone"):
        JsonConstraint(_vocabulary([c for c in '{}[]":,-.0123456789eEtrufals']), [2])
    with pytest.raises(InputError, match=r"needs a token for each of \['q'\]"):
        JsonConstraint(VOCABULARY, [2], read_schema({"type": "object", "properties": {"q": {"type": "null"}}}))
    with pytest.raises(InputError, match="end-of-sequence token"):
        JsonConstraint(VOCABULARY, [])


def test_sentencepiece_token_texts_keep_their_leading_spaces(tmp_path):
    """Mistral's v1 sentencepiece tokenizer drops a word's leading space when a token is decoded
    alone; the texts are what the token adds after other text, so they add up to the decoding."""
    spec = pytest.importorskip("mistral_common")
    shutil.copyfile(Path(spec.__file__).parent / "data" / "tokenizer.model.v1", tmp_path / "tokenizer.model")
    tokenizer = lamina.AutoTokenizer.from_pretrained(tmp_path)
    vocabulary = TokenTexts.of(tokenizer, len(tokenizer) + 5)
    text = '{"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetical science"]}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(vocabulary.texts[i] for i in ids[1:]) == tokenizer.decode(ids)[len(tokenizer.decode(ids[:1])):]
    assert any(vocabulary.texts[i].startswith(" ") and not tokenizer.decode([i]).startswith(" ") for i in ids)
    assert vocabulary.texts[tokenizer.eos_token_id] == "" and vocabulary.texts[-5:] == [""] * 5
    JsonConstraint(vocabulary, [tokenizer.eos_token_id])  # every needed character is a token alone


def test_generate_with_the_processor_writes_json_and_stops(tmp_path):
    """A tiny random Mistral over a character vocabulary: greedy and sampled rows of one batch
    each write an object of the schema (random weights would ramble in strings, so the schema
    has none) and end with the end token."""
    from tests.serving.test_json_output import json_model

    model, tokenizer = json_model(tmp_path)
    schema = read_schema({"type": "object", "properties": {"a": {"type": "integer"}, "ok": {"type": "boolean"},
                                                            "z": {"type": "array", "items": {"type": "null"}}},
                          "required": ["a", "ok", "z"], "additionalProperties": False})
    prompt = torch.tensor([[5, 9, 14, 20], [40, 50, 60, 70]])
    for sample in (False, True):
        torch.manual_seed(0)
        processor = JsonLogitsProcessor(tokenizer, tokenizer.eos_token_id, schema, model.config.vocab_size)
        out = model.generate(prompt, max_new_tokens=200, do_sample=sample, top_k=0, logits_processor=[processor],
                             pad_token_id=0)
        for row in out[:, prompt.shape[1]:].tolist():
            assert tokenizer.eos_token_id in row
            text = tokenizer.decode(row, skip_special_tokens=True)
            value = json.loads(text)
            assert set(value) == {"a", "ok", "z"} and isinstance(value["a"], int) and isinstance(value["ok"], bool)

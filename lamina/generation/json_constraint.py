"""Constrained decoding to JSON: whatever the model prefers, the text it writes is a JSON object.

A character-level pushdown automaton reads the text written so far. At each step the candidates
are taken in descending logit order and each one's text is run through the automaton; the tokens
it rejects are masked out. A greedy row needs only the first token accepted; a sampled row keeps
every accepted one among its `SAMPLED_CANDIDATES` most likely (further tokens hold a negligible
share of the probability). Once the object closes, only the end-of-sequence tokens are allowed.

    value   ─ '{' ─► OBJECT_OPEN ─ '"' ─► KEY ─ '"' ─► COLON ─ ':' ─► value ─► AFTER ─ ',' / '}' ─► …
            ─ '[' ─► ARRAY_OPEN  ─ value ─► AFTER ─ ',' / ']' ─► …
            ─ '"' ─► STRING,  '-' 0-9 ─► NUMBER,  t f n ─► LITERAL
    the stack holds one frame per open object or array; when the outermost one closes: DONE

States are immutable tuples, so every candidate starts from the same state without copying.
A `JsonSchema` narrows the automaton: which value types, an object's keys (declared, required,
others allowed or not) and an array's items. Runs of whitespace and numbers' digits are bounded,
as llama.cpp's JSON grammar bounds them, so a model cannot loop forever on either.

`TokenTexts.of(tokenizer)` decodes the vocabulary once per tokenizer; `JsonConstraint` is one
sequence's automaton (the server's per-row hook); `JsonLogitsProcessor` serves `generate`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import InputError
from .processors import LogitsProcessor

# whitespace characters in a row outside strings, and digits in a number's integer part, fraction
# and exponent: bounded so that greedy decoding cannot loop on them
MAX_WHITESPACE = 20
MAX_DIGITS = 20
MAX_EXPONENT_DIGITS = 3
# candidates a sampled row checks (in descending logit order) before sampling among the accepted
SAMPLED_CANDIDATES = 64
# candidates a greedy row takes at once, and how many times more each widening takes
GREEDY_CANDIDATES = 8
WIDEN = 16

TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_WHITESPACE = frozenset(" \t\n\r")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPED = frozenset('"\\/bfnrt')
_LITERALS = {"t": ("boolean", "rue"), "f": ("boolean", "alse"), "n": ("null", "ull")}
# characters that make progress from any state (closing what is open, a value's smallest form, the
# rest of a literal begun), whatever the schema: every tokenizer that serves JSON must have each as a
# token of its own, so that some token is always accepted
_NEEDED = frozenset('{}[]":,0123456789truefalsn')


@dataclass(eq=False)
class JsonSchema:
    """What a JSON value may be: its `types`; for an object, its declared `properties` (None: any
    keys, any values), the `required` ones and whether `additional` keys are allowed; for an
    array, its `items` (None: any value)."""

    types: frozenset[str]
    properties: dict[str, JsonSchema] | None = None
    required: frozenset[str] = frozenset()
    additional: bool = True
    items: JsonSchema | None = None
    # the characters between a declared key's quotes → the key
    encoded: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.encoded = {json.dumps(key)[1:-1]: key for key in self.properties or {}}


ANY = JsonSchema(TYPES)
JSON_OBJECT = JsonSchema(frozenset({"object"}))

# schema keywords that only describe; any other keyword would narrow values in a way not enforced
_ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "examples", "default", "$comment"})
_SUPPORTED = ("'type' (object, array, string, number, integer, boolean, null, or a list of them), an object's "
              "'properties', 'required' and 'additionalProperties' (true or false), an array's 'items'")


def read_schema(schema: Any, where: str = "schema") -> JsonSchema:
    """A JSON Schema (the subset in `_SUPPORTED`) as a `JsonSchema`; the root must be an object.

    Raises `InputError` naming the place in the schema, what is supported and what was found."""
    read = _read_node(schema, where)
    if read.types != frozenset({"object"}):
        raise InputError(f"{where}: the root must have 'type': 'object', found {schema.get('type')!r}")
    return read


def _read_node(schema: Any, where: str) -> JsonSchema:
    if not isinstance(schema, dict):
        raise InputError(f"{where}: expected a schema object, found {schema!r}")
    unknown = sorted(set(schema) - _ANNOTATIONS - {"type", "properties", "required", "additionalProperties", "items"})
    if unknown:
        raise InputError(f"{where}: unsupported keyword(s) {unknown}; supported: {_SUPPORTED}")
    kind = schema.get("type", sorted(TYPES))  # no type: any value
    types = frozenset([kind] if isinstance(kind, str) else kind if isinstance(kind, list) else [None])
    if not types or not types <= TYPES:
        raise InputError(f"{where}.type: expected one of {sorted(TYPES)} or a list of them, found {kind!r}")
    if "integer" in types and "number" in types:
        types = types - {"integer"}
    properties = _read_properties(schema, where) if "object" in types else None
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(k, str) and k in (properties or {}) for k in required):
        raise InputError(f"{where}.required: expected a list of names in 'properties', found {required!r}")
    additional = schema.get("additionalProperties", True)
    if not isinstance(additional, bool):
        raise InputError(f"{where}.additionalProperties: expected true or false, found {additional!r}; "
                         f"supported: {_SUPPORTED}")
    items = _read_node(schema["items"], f"{where}.items") if "items" in schema else None
    return JsonSchema(types, properties, frozenset(required), additional, items)


def _read_properties(schema: dict[str, Any], where: str) -> dict[str, JsonSchema] | None:
    properties = schema.get("properties")
    if properties is None:
        return None if schema.get("additionalProperties", True) else {}
    if not isinstance(properties, dict):
        raise InputError(f"{where}.properties: expected an object of schemas, found {properties!r}")
    for key in properties:
        if not key.isascii() or not key.isprintable():
            raise InputError(f"{where}.properties: key names must be printable ASCII, found {key!r}")
    return {key: _read_node(value, f"{where}.properties.{key}") for key, value in properties.items()}


# -- the automaton ---------------------------------------------------------------------------------

# modes of `_State`; `detail` holds, per mode:
VALUE = 0  # a value's start: its JsonSchema
ARRAY_OPEN = 1  # after '[': the items' JsonSchema (']' or a value)
OBJECT_OPEN = 2  # after '{': None ('}' or a key)
OBJECT_KEY = 3  # after ',' in an object: None (a key)
KEY = 4  # inside a key: (the key's characters so far, or None when not needed; escape phase)
COLON = 5  # after a key: the value's JsonSchema
AFTER = 6  # after a value inside an object or array: None
STRING = 7  # inside a string value: escape phase (0 plain, -1 after '\\', k: hex digits left)
NUMBER = 8  # inside a number: (phase, digits in this part, integer only)
LITERAL = 9  # inside true / false / null: the characters still to come
DONE = 10  # the outermost object has closed: None

# number phases; the ones a number may end in are _ENDS
_MINUS, _ZERO, _INTEGER, _DOT, _FRACTION, _EXPONENT_MARK, _EXPONENT_SIGN, _EXPONENT = range(8)
_ENDS = frozenset({_ZERO, _INTEGER, _FRACTION, _EXPONENT})


class _Frame(NamedTuple):
    """An open object (`seen`: its keys so far, when its schema declares keys) or array."""

    is_object: bool
    schema: JsonSchema
    seen: frozenset[str]
    parent: _Frame | None


class _State(NamedTuple):
    mode: int
    detail: Any
    stack: _Frame | None
    spaces: int  # whitespace characters just read, outside strings


def start(schema: JsonSchema) -> _State:
    return _State(VALUE, schema, None, 0)


def feed(state: _State, text: str) -> _State | None:
    """The state after reading `text`, or None if no JSON value of the schema starts that way."""
    for char in text:
        state = _step(state, char)
        if state is None:
            return None
    return state


def _step(state: _State, char: str) -> _State | None:
    mode = state.mode
    if mode == STRING:
        return _in_string(state, char)
    if mode == KEY:
        return _in_key(state, char)
    if mode == NUMBER:
        return _in_number(state, char)
    if mode == LITERAL:
        if char != state.detail[0]:
            return None
        return state._replace(detail=state.detail[1:]) if len(state.detail) > 1 else _after_value(state.stack)
    if mode == DONE:
        return None
    if char in _WHITESPACE:
        return state._replace(spaces=state.spaces + 1) if state.spaces < MAX_WHITESPACE else None
    if mode == VALUE:
        return _value_start(state.detail, state.stack, char)
    if mode == ARRAY_OPEN:
        return _close(state.stack) if char == "]" else _value_start(state.detail, state.stack, char)
    if mode == OBJECT_OPEN and char == "}":
        return _close(state.stack) if state.stack.schema.required <= state.stack.seen else None
    if mode in (OBJECT_OPEN, OBJECT_KEY):
        frame = state.stack
        return _State(KEY, (_key_start(frame), 0), frame, 0) if char == '"' and _may_add_key(frame) else None
    if mode == COLON:
        return _State(VALUE, state.detail, state.stack, 0) if char == ":" else None
    return _after(state.stack, char)


def _value_start(schema: JsonSchema, stack: _Frame | None, char: str) -> _State | None:
    types = schema.types
    if char == "{" and "object" in types:
        return _State(OBJECT_OPEN, None, _Frame(True, schema, frozenset(), stack), 0)
    if char == "[" and "array" in types:
        return _State(ARRAY_OPEN, schema.items or ANY, _Frame(False, schema, frozenset(), stack), 0)
    if char == '"' and "string" in types:
        return _State(STRING, 0, stack, 0)
    if (char == "-" or char in _DIGITS) and ("number" in types or "integer" in types):
        phase = _MINUS if char == "-" else _ZERO if char == "0" else _INTEGER
        return _State(NUMBER, (phase, int(char != "-"), "number" not in types), stack, 0)
    literal = _LITERALS.get(char)
    if literal is not None and literal[0] in types:
        return _State(LITERAL, literal[1], stack, 0)
    return None


def _after_value(stack: _Frame | None) -> _State:
    return _State(DONE if stack is None else AFTER, None, stack, 0)


def _close(frame: _Frame) -> _State:
    return _after_value(frame.parent)


def _after(frame: _Frame, char: str) -> _State | None:
    """After a value inside `frame`: ',' or the frame's closing bracket."""
    if char == ",":
        if not frame.is_object:
            return _State(VALUE, frame.schema.items or ANY, frame, 0)
        return _State(OBJECT_KEY, None, frame, 0) if _may_add_key(frame) else None
    if char == ("}" if frame.is_object else "]"):
        return _close(frame) if not frame.is_object or frame.schema.required <= frame.seen else None
    return None


def _may_add_key(frame: _Frame) -> bool:
    schema = frame.schema
    return schema.additional or len(frame.seen) < len(schema.properties or ())


def _key_start(frame: _Frame) -> str | None:
    """A new key's characters so far: "" when the object's keys are checked, None when any key goes."""
    return None if frame.schema.properties is None else ""


def _in_string(state: _State, char: str) -> _State | None:
    phase = _string_phase(state.detail, char)
    if phase is None:
        return None
    return _after_value(state.stack) if phase == "end" else state._replace(detail=phase)


def _string_phase(phase: int, char: str) -> int | str | None:
    """The escape phase after `char` inside a string ("end" when it closes, None if invalid)."""
    if phase == 0:
        if char == '"':
            return "end"
        if char == "\\":
            return -1
        return 0 if char >= " " else None
    if phase == -1:
        return 0 if char in _ESCAPED else 4 if char == "u" else None
    return phase - 1 if char in _HEX else None


def _in_key(state: _State, char: str) -> _State | None:
    written, phase = state.detail
    after = _string_phase(phase, char)
    if after is None:
        return None
    frame = state.stack
    if written is None:  # any key, any value
        return _State(COLON, ANY, frame, 0) if after == "end" else state._replace(detail=(None, after))
    schema = frame.schema
    if after == "end":
        name = schema.encoded.get(written)
        if name is None:
            return _State(COLON, ANY, frame, 0) if schema.additional else None
        if name in frame.seen:
            return None
        return _State(COLON, schema.properties[name], frame._replace(seen=frame.seen | {name}), 0)
    written += char
    if not schema.additional and not any(key.startswith(written) and schema.encoded[key] not in frame.seen
                                         for key in schema.encoded):
        return None
    return state._replace(detail=(written, after))


def _in_number(state: _State, char: str) -> _State | None:
    phase, digits, integer_only = state.detail
    if char in _DIGITS:
        if phase in (_MINUS, _DOT, _EXPONENT_MARK, _EXPONENT_SIGN):
            following = {_MINUS: _ZERO if char == "0" else _INTEGER, _DOT: _FRACTION}.get(phase, _EXPONENT)
            return state._replace(detail=(following, 1, integer_only))
        limit = MAX_EXPONENT_DIGITS if phase == _EXPONENT else MAX_DIGITS
        if phase == _ZERO or digits >= limit:
            return None
        return state._replace(detail=(phase, digits + 1, integer_only))
    if char == "." and phase in (_ZERO, _INTEGER) and not integer_only:
        return state._replace(detail=(_DOT, 0, integer_only))
    if char in "eE" and phase in (_ZERO, _INTEGER, _FRACTION) and not integer_only:
        return state._replace(detail=(_EXPONENT_MARK, 0, integer_only))
    if char in "+-" and phase == _EXPONENT_MARK:
        return state._replace(detail=(_EXPONENT_SIGN, 0, integer_only))
    if phase not in _ENDS:
        return None
    return _step(_after_value(state.stack), char)  # the number ended: `char` belongs to what follows


# -- over a tokenizer's vocabulary -----------------------------------------------------------------


class TokenTexts:
    """Each token's text as it reads after other text (empty for special tokens, which the
    constraint never takes), and which tokens are plain string content (no quote, backslash or
    control character), which need no automaton inside a string."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.plain = [bool(text) and '"' not in text and "\\" not in text and min(text) >= " " for text in texts]
        self.single = {text: token for token, text in enumerate(texts) if len(text) == 1}

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def of(tokenizer: Any, size: int | None = None) -> TokenTexts:
        """The texts of the ids `0 … size-1` (the model's vocabulary, which may be padded past the
        tokenizer's). Each is decoded after an anchor token and the anchor's text cut off, so that a
        word's leading space survives where decoding the token alone would drop it."""
        size = size or len(tokenizer)
        known = min(size, len(tokenizer))
        anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
        head = tokenizer.decode([anchor], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        pairs = tokenizer.batch_decode([[anchor, token] for token in range(known)], skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
        texts = [pair[len(head):] if pair.startswith(head) else "" for pair in pairs]
        return TokenTexts(texts + [""] * (size - known))


class JsonConstraint:
    """One sequence's JSON automaton over `vocabulary`: `greedy` picks a greedy row's token from its
    logits `(vocab,)`, `mask` masks a sampled row's; then `advance` reads the token taken. `done`
    once the outermost object has closed, when only the `eos_token_ids` are allowed."""

    def __init__(self, vocabulary: TokenTexts, eos_token_ids: tuple[int, ...] | list[int],
                 schema: JsonSchema = JSON_OBJECT) -> None:
        if not eos_token_ids:
            raise InputError("JSON output needs an end-of-sequence token to stop at; the generation config has none")
        needed = _NEEDED | _nested_key_chars(schema)
        missing = sorted(char for char in needed if char not in vocabulary.single)
        if missing:
            raise InputError(f"JSON output needs a token for each of {missing} alone; this tokenizer has none")
        self.vocabulary = vocabulary
        self.eos_token_ids = tuple(eos_token_ids)
        self.state = start(schema)
        self._masked: torch.Tensor | None = None
        self._kept = torch.tensor([], dtype=torch.long)

    @property
    def done(self) -> bool:
        return self.state.mode == DONE

    def accepts(self, token: int) -> bool:
        return self._next(token) is not None

    def _next(self, token: int) -> _State | None:
        if self.state.mode == DONE:
            return self.state if token in self.eos_token_ids else None
        if self.vocabulary.plain[token] and self.state.mode == STRING and self.state.detail == 0:
            return self.state
        text = self.vocabulary.texts[token]
        return feed(self.state, text) if text else None

    def allowed(self, logits: torch.Tensor, candidates: int, first_only: bool = False) -> list[int]:
        """The tokens accepted among the `candidates` most likely of `logits (vocab,)` (only the
        first accepted if `first_only`); if none is, the most likely accepted one, found by
        widening the candidates `WIDEN` times at a time (there always is one: the constructor
        checked the vocabulary)."""
        if self.state.mode == DONE:
            return sorted(self.eos_token_ids, key=lambda token: -float(logits[token]))
        checked, count = 0, min(candidates, logits.numel())
        while checked < count:
            ranked = torch.topk(logits, count).indices.tolist()
            accepted = []
            for token in ranked[checked:]:
                if self.accepts(token):
                    accepted.append(token)
                    if first_only or checked:
                        return accepted
            if accepted:
                return accepted
            checked, count = count, min(count * WIDEN, logits.numel())
        raise InputError(f"no token of the vocabulary continues the JSON text from state {self.state}")

    def greedy(self, logits: torch.Tensor) -> int:
        """The first token of `logits (vocab,)` in descending order that the automaton accepts."""
        best = int(logits.argmax())  # most often the model's own choice goes: no sort needed
        if self.state.mode != DONE and self.accepts(best):
            return best
        return self.allowed(logits, GREEDY_CANDIDATES, first_only=True)[0]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits (vocab,)` with every token at -inf but the accepted ones among the
        `SAMPLED_CANDIDATES` most likely, to sample from. The row returned is this constraint's
        own buffer, valid until the next call (filling a new row each step costs more than the rest)."""
        if self._masked is None or self._masked.shape != logits.shape:
            self._masked = torch.full_like(logits, float("-inf"))
        else:
            self._masked[self._kept] = float("-inf")
        self._kept = torch.tensor(self.allowed(logits, SAMPLED_CANDIDATES), device=logits.device)
        self._masked[self._kept] = logits[self._kept]
        return self._masked

    def advance(self, token: int) -> bool:
        """Read the token taken; False, and the state unchanged, for a token that `mask` would not
        have allowed."""
        after = self._next(token)
        if after is not None:
            self.state = after
        return after is not None


def _nested_key_chars(schema: JsonSchema | None) -> set[str]:
    """The characters of every key declared in `schema` and the schemas inside it."""
    if schema is None:
        return set()
    chars = {char for key in schema.encoded for char in key}
    for child in (schema.properties or {}).values():
        chars |= _nested_key_chars(child)
    return chars | _nested_key_chars(schema.items)


class JsonLogitsProcessor(LogitsProcessor):
    """`generate(…, logits_processor=[JsonLogitsProcessor(tokenizer, eos)])`: each row's new tokens
    form a JSON object (of `schema`), then the end-of-sequence token. Rows are masked to the
    accepted tokens among their `SAMPLED_CANDIDATES` most likely, so greedy search takes the first
    accepted and sampling chooses among them."""

    def __init__(self, tokenizer: Any, eos_token_ids: int | list[int], schema: JsonSchema = JSON_OBJECT,
                 vocab_size: int | None = None) -> None:
        self.vocabulary = TokenTexts.of(tokenizer, vocab_size)
        self.eos_token_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        self.schema = schema
        self.rows: list[JsonConstraint] | None = None
        self.length = 0
        self.ended: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """`input_ids (batch, length)`, `scores (batch, vocab)` → `scores` masked per row."""
        if self.rows is None:
            self.rows = [JsonConstraint(self.vocabulary, self.eos_token_ids, self.schema) for _ in range(len(scores))]
            self.ended = [False] * len(scores)
        elif input_ids.shape[1] > self.length:
            for index, token in enumerate(input_ids[:, -1].tolist()):
                # a token the mask did not allow (the end token taken, or padding after a stop
                # string) means generate has finished the row
                self.ended[index] = self.ended[index] or self.rows[index].done or not self.rows[index].advance(token)
        self.length = input_ids.shape[1]
        masked = scores.clone()
        for index, constraint in enumerate(self.rows):
            if not self.ended[index]:
                masked[index] = constraint.mask(scores[index])
        return masked

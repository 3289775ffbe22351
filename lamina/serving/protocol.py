"""OpenAI request bodies read into plain values, and OpenAI-style errors.

Every check names the field, what was expected and what was found, and raises `APIError`, which the
app turns into `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..generation.json_constraint import JSON_OBJECT, JsonSchema, read_schema

# OpenAI's own limits on these fields
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETIONS = 5
MAX_CHOICES = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class APIError(Exception):
    """An error answered as OpenAI does: `status`, a message, its type, the field and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _invalid(param: str, expected: str, value: Any) -> APIError:
    return APIError(400, f"'{param}': expected {expected}, found {value!r}", param=param, code="invalid_value")


def field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], expected: str, default: Any = None,
          required: bool = False) -> Any:
    """`body[name]` if it is one of `kinds` (booleans are not numbers), `default` when absent or null."""
    if name not in body or body[name] is None:
        if required:
            raise APIError(400, f"'{name}' is required", param=name, code="missing_required_parameter")
        return default
    value = body[name]
    numeric = kinds in (int, float) or (isinstance(kinds, tuple) and (int in kinds or float in kinds))
    if not isinstance(value, kinds) or (numeric and isinstance(value, bool)):
        raise _invalid(name, expected, value)
    return value


@dataclass
class Options:
    """The sampling and output options shared by chat and completions."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: none; k: the chosen token's and the k most likely
    json_schema: JsonSchema | None  # None: any text; else the JSON value the output must be


def read_options(body: dict[str, Any], chat: bool) -> Options:
    max_tokens = field(body, "max_tokens", int, "an integer ≥ 1")
    if chat:
        max_tokens = field(body, "max_completion_tokens", int, "an integer ≥ 1", max_tokens)
    elif max_tokens is None:
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    if max_tokens is not None and max_tokens < 1:
        raise _invalid("max_tokens", "an integer ≥ 1", max_tokens)
    temperature = float(field(body, "temperature", (int, float), "a number between 0 and 2", 1.0))
    if not math.isfinite(temperature) or not 0 <= temperature <= 2:
        raise _invalid("temperature", "a finite number between 0 and 2", temperature)
    top_p = float(field(body, "top_p", (int, float), "a number in (0, 1]", 1.0))
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise _invalid("top_p", "a finite number in (0, 1]", top_p)
    seed = field(body, "seed", int, "an integer")
    stop = field(body, "stop", (str, list), "a string or a list of up to 4 strings", [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise _invalid("stop", "a string or a list of up to 4 non-empty strings", body["stop"])
    n = field(body, "n", int, f"an integer between 1 and {MAX_CHOICES}", 1)
    if not 1 <= n <= MAX_CHOICES:
        raise _invalid("n", f"an integer between 1 and {MAX_CHOICES}", n)
    stream = field(body, "stream", bool, "a boolean", False)
    stream_options = field(body, "stream_options", dict, "an object", {})
    include_usage = field(stream_options, "include_usage", bool, "a boolean", False)
    return Options(max_tokens, temperature, top_p, seed, stop, n, stream, include_usage, _logprobs(body, chat),
                   _response_format(body))


def _response_format(body: dict[str, Any]) -> JsonSchema | None:
    """`response_format`: {"type": "text"} (the default), {"type": "json_object"}, or
    {"type": "json_schema", "json_schema": {"name", "schema", …}} with a schema lamina enforces."""
    response_format = field(body, "response_format", dict, "an object with a 'type'", {"type": "text"})
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise _invalid("response_format.type", "'text', 'json_object' or 'json_schema'", kind)
    where = "response_format.json_schema"
    described = response_format.get("json_schema")
    if not isinstance(described, dict) or not isinstance(described.get("name"), str):
        raise _invalid(where, "an object with a 'name' string and a 'schema'", described)
    try:
        return read_schema(described.get("schema", {"type": "object"}), f"{where}.schema")
    except InputError as err:
        raise APIError(400, str(err), param=where, code="unsupported_value") from err


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    if not chat:  # completions: `logprobs` is the number of alternatives
        count = field(body, "logprobs", int, f"an integer between 0 and {MAX_LOGPROBS_COMPLETIONS}")
        if count is not None and not 0 <= count <= MAX_LOGPROBS_COMPLETIONS:
            raise _invalid("logprobs", f"an integer between 0 and {MAX_LOGPROBS_COMPLETIONS}", count)
        return count
    wanted = field(body, "logprobs", bool, "a boolean", False)
    top = field(body, "top_logprobs", int, f"an integer between 0 and {MAX_TOP_LOGPROBS_CHAT}")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS_CHAT:
        raise _invalid("top_logprobs", f"an integer between 0 and {MAX_TOP_LOGPROBS_CHAT}", top)
    if top is not None and not wanted:
        raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    return (top or 0) if wanted else None


def read_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The chat's messages with their content as text (text parts joined)."""
    messages = field(body, "messages", list, "a non-empty list of messages", required=True)
    if not messages:
        raise _invalid("messages", "a non-empty list of messages", messages)
    read = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(where, "an object with 'role' and 'content'", message)
        role = field(message, "role", str, "a string", required=True)
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise _invalid(f"{where}.content", "a string or a list of text parts", content)
            content = "".join(part["text"] for part in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _invalid(f"{where}.content", "a string or a list of text parts", content)
        read.append({"role": role, "content": content})
    return read


def read_prompts(body: dict[str, Any], vocab_size: int) -> list[str | list[int]]:
    """`/v1/completions`' prompt: a string, token ids, or a list of either (one choice set each)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and _token_ids(prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
        prompts = prompt
    elif prompt is None:
        raise APIError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
    else:
        raise _invalid("prompt", "a string, a list of token ids, or a non-empty list of either", prompt)
    for item in prompts:
        if not isinstance(item, str) and not all(0 <= token < vocab_size for token in item):
            raise _invalid("prompt", f"token ids in [0, {vocab_size})", item)
    return prompts


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def read_embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """`/v1/embeddings`' input: a string, token ids, or a list of either."""
    value = body.get("input")
    if isinstance(value, str) or _token_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or _token_ids(v) for v in value):
        return value
    if value is None:
        raise APIError(400, "'input' is required", param="input", code="missing_required_parameter")
    raise _invalid("input", "a string, a list of token ids, or a non-empty list of either", value)

"""Mistral's instruct formats, producing the ids `mistral_common` produces for a conversation.

mistral_common does not render a template and tokenize the result: it encodes every message's
text on its own (special-token look-alikes in the text stay text) and puts control ids between.
Before that it normalizes the conversation: system messages are joined into one system prompt,
runs of messages of the same role are joined with a blank line, and a conversation that does not
start with a user turn gets an empty one.

- v1 (`tokenizer.model.v1`): `<s>` then, per user turn, the text "[INST] {user} [/INST]"; the
  system prompt goes before the *first* user message; assistant turns are their text + `</s>`.
- v2 / v3 (sentencepiece `…model.v3`, tekken): `[INST]` and `[/INST]` are control ids around the
  user text; the system prompt goes before the *last* user message; assistant text loses
  trailing spaces.
- v7 (`…model.v7`, later tekken files): like v3, but each system message stays where it is, as
  `[SYSTEM_PROMPT] text [/SYSTEM_PROMPT]`, and is not joined with its neighbours.

Tools (v3 and later) are listed as JSON between `[AVAILABLE_TOOLS]` and `[/AVAILABLE_TOOLS]`
before the last user turn; an assistant's calls follow `[TOOL_CALLS]` as JSON; a tool's result
sits between `[TOOL_RESULTS]` and `[/TOOL_RESULTS]`.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InputError, UnsupportedError

JOIN = "\n\n"
VERSIONS = ("v1", "v2", "v3", "v7")


def instruct_version(tokenizer: Any) -> str:
    """The version the tokenizer's file states (tekken's config, a `.model.vN` file name), else
    the one its control tokens imply: `[SYSTEM_PROMPT]` → v7, `[INST]` → v3, none → v1."""
    stated = tokenizer.extra_config.get("mistral_instruct_version")
    if stated in VERSIONS:
        return stated
    if isinstance(stated, str) and stated[1:].isdigit():
        # later versions change tools, images and thinking, not the layout of plain text turns
        return "v7" if int(stated[1:]) >= 7 else "v3"
    special = _special_ids(tokenizer)
    for token, version in (("[SYSTEM_PROMPT]", "v7"), ("[INST]", "v3")):
        if tokenizer.engine.token_to_id(token) in special:
            return version
    return "v1"


def _special_ids(tokenizer: Any) -> set[int]:
    return {i for i, (_, special) in tokenizer.engine.added_tokens().items() if special}


def normalize_conversation(
    messages: list[dict[str, Any]], systems_in_place: bool = False
) -> tuple[str | None, list[dict[str, Any]]]:
    """(system prompt or None, turns) as mistral_common's normalizer makes them; with
    `systems_in_place` (v7) system messages stay turns of their own and there is no system prompt.

    A turn is `{"role", "content"}`; an assistant turn also has its `tool_calls`, a tool turn its
    `tool_call_id`. Runs of user or assistant messages are joined (assistant tool calls too); tool
    results stay one turn each.
    """
    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    previous_role = None
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant", "tool"):
            raise UnsupportedError(
                f"messages[{index}]: role {role!r} is not supported by the Mistral instruct encoder "
                "(system, user, assistant, tool)"
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InputError(f"messages[{index}]: expected text content, found {type(content).__name__}")
        turn = {"role": role, "content": content}
        if role == "assistant":
            turn["tool_calls"] = [_tool_call(call, index) for call in message.get("tool_calls") or ()]
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InputError(f"messages[{index}]: a tool result needs the tool_call_id of the call it answers")
            turn["tool_call_id"] = call_id
        if role == "system" and not systems_in_place:
            if content:
                system_parts.append(content)
        elif role == previous_role and role in ("user", "assistant"):
            last = turns[-1]
            # empty messages add nothing, not even the blank line
            last["content"] = JOIN.join(part for part in (last["content"], content) if part)
            if role == "assistant":
                last["tool_calls"] += turn["tool_calls"]
        else:
            turns.append(turn)
        previous_role = role
    if not turns or (turns[0]["role"] != "user" and not systems_in_place):
        turns.insert(0, {"role": "user", "content": ""})
    return (JOIN.join(system_parts) if system_parts else None), turns


def _tool_call(call: Any, index: int) -> dict[str, Any]:
    """An OpenAI-style tool call as mistral_common writes it: name, arguments (parsed when they
    are JSON), and the call's id when it has one."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InputError(f"messages[{index}]: expected tool calls as {{'function': {{'name', 'arguments'}}}}, found {call!r:.80}")
    arguments = function.get("arguments")
    arguments = _json_value(arguments) if isinstance(arguments, str) or arguments is None else arguments
    prepared = {"name": function["name"], "arguments": arguments}
    if call.get("id") and call["id"] != "null":
        prepared["id"] = call["id"]
    return prepared


def _json_value(text: str | None) -> Any:
    """`text` parsed as JSON when it is JSON (empty: `{}`), else the text itself, as mistral_common reads
    tool arguments and results."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _tools_json(tools: list[dict[str, Any]]) -> str:
    """The `[AVAILABLE_TOOLS]` text: each tool as mistral_common's `Tool` dumps it."""
    listed = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or "name" not in function or "parameters" not in function:
            raise InputError(
                f"tools[{index}]: expected {{'type': 'function', 'function': {{'name', 'description', 'parameters'}}}}, "
                f"found {tool!r:.80}"
            )
        described = {"name": function["name"], "description": function.get("description", ""), "parameters": function["parameters"]}
        listed.append({"type": "function", "function": described})
    return json.dumps(listed, ensure_ascii=False)


def encode_instruct(
    tokenizer: Any, messages: list[dict[str, Any]], version: str | None = None, tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """The ids mistral_common's `encode_chat_completion` gives for `messages` (dicts with `role`
    and `content`; assistant `tool_calls` and `tool` results as in OpenAI's format) and the
    JSON-schema `tools`, for a sentencepiece (`tokenizer.model.v1/.v3/.v7`) or tekken tokenizer.

    Tools are listed before the last user turn; v3 writes a tool result as JSON with its call id,
    v7 as the call id then `[TOOL_CONTENT]` and the raw text. A conversation may end with an
    assistant message; its `</s>` is then included (mistral_common accepts this only for an
    assistant prefix, which it leaves without `</s>`).
    """
    version = version or instruct_version(tokenizer)
    if version not in VERSIONS:
        raise UnsupportedError(f"version: expected one of {VERSIONS}, found {version!r}")
    system_prompt, turns = normalize_conversation(messages, systems_in_place=version == "v7")
    if version == "v1" and (tools or any(t["role"] == "tool" or t.get("tool_calls") for t in turns)):
        raise UnsupportedError("the v1 instruct format has no tool calls; use a v3 or later tokenizer")
    user_indices = [i for i, turn in enumerate(turns) if turn["role"] == "user"] or [-1]
    system_at = user_indices[0] if version == "v1" else user_indices[-1]
    special = _ControlIds(tokenizer)
    # each part is a control id or a text that mistral_common encodes on its own
    parts: list[int | str] = [tokenizer.convert_tokens_to_ids("<s>")]
    for index, turn in enumerate(turns):
        parts += _turn_parts(turn, version, special, tokenizer.convert_tokens_to_ids("</s>"), index)
        if turn["role"] == "user":
            content = system_prompt + JOIN + turn["content"] if index == system_at and system_prompt else turn["content"]
            if version == "v1":
                parts.append(f"[INST] {content} [/INST]")
                continue
            if index == user_indices[-1] and tools:
                parts += [special["[AVAILABLE_TOOLS]"], _tools_json(tools), special["[/AVAILABLE_TOOLS]"]]
            parts += [special["[INST]"], content, special["[/INST]"]]
    # mistral_common encodes message text raw: "[INST]" or "</s>" typed by a user stay text
    encoded = iter(tokenizer.engine.encode_batch([part for part in parts if isinstance(part, str)], split_special_tokens=True))
    ids: list[int] = []
    for part in parts:
        ids.extend(next(encoded) if isinstance(part, str) else [part])
    return ids


class _ControlIds(dict):
    """Control token → id, looked up when first needed (a v3 file has no `[SYSTEM_PROMPT]`)."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, token: str) -> int:
        self[token] = self.tokenizer.convert_tokens_to_ids(token)
        return self[token]


def _turn_parts(turn: dict[str, Any], version: str, special: dict[str, int], eos: int, index: int) -> list[int | str]:
    """The parts of a system, assistant or tool turn (user turns are laid out by the caller)."""
    role, content = turn["role"], turn["content"]
    if role == "system":
        return [special["[SYSTEM_PROMPT]"], content, special["[/SYSTEM_PROMPT]"]]
    if role == "tool":
        if version == "v7":
            return [special["[TOOL_RESULTS]"], turn["tool_call_id"], special["[TOOL_CONTENT]"], content, special["[/TOOL_RESULTS]"]]
        result = json.dumps({"content": _json_value(content), "call_id": turn["tool_call_id"]}, ensure_ascii=False)
        return [special["[TOOL_RESULTS]"], result, special["[/TOOL_RESULTS]"]]
    if role != "assistant":
        return []
    calls = turn["tool_calls"]
    if not content and not calls:
        raise InputError(f"messages: assistant turn {index} is empty; mistral_common refuses empty assistant messages")
    if content and calls and version != "v7":
        raise InputError(f"messages: assistant turn {index} has both text and tool calls, which {version} cannot encode")
    parts: list[int | str] = []
    if content:
        parts.append(content if version == "v1" else content.rstrip(" "))
    if calls:
        parts += [special["[TOOL_CALLS]"], json.dumps(calls, ensure_ascii=False)]
    return [*parts, eos]

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
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError, UnsupportedError

JOIN = "\n\n"
VERSIONS = ("v1", "v2", "v3")


def instruct_version(tokenizer: Any) -> str:
    """v1 when `[INST]` is ordinary text to the tokenizer, v3 when it is a control token."""
    token_id = tokenizer.engine.token_to_id("[INST]")
    return "v3" if token_id is not None and token_id in _special_ids(tokenizer) else "v1"


def _special_ids(tokenizer: Any) -> set[int]:
    return {i for i, (_, special) in tokenizer.engine.added_tokens().items() if special}


def normalize_conversation(messages: list[dict[str, Any]]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system prompt or None, [(role, text)]) as mistral_common's normalizer makes them."""
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    previous_role = None
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise UnsupportedError(
                f"messages[{index}]: role {role!r} is not supported by the Mistral instruct encoder (system, user, assistant)"
            )
        if message.get("tool_calls"):
            raise UnsupportedError(f"messages[{index}]: tool calls are not supported by the Mistral instruct encoder")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InputError(f"messages[{index}]: expected text content, found {type(content).__name__}")
        if role == "system":
            if content:
                system_parts.append(content)
        elif role == previous_role:
            turns[-1] = (role, turns[-1][1] + JOIN + content)
        else:
            turns.append((role, content))
        previous_role = role
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", ""))
    return (JOIN.join(system_parts) if system_parts else None), turns


def encode_instruct(tokenizer: Any, messages: list[dict[str, Any]], version: str | None = None) -> list[int]:
    """The ids mistral_common's `encode_chat_completion` gives for `messages` (dicts with `role`
    and `content`), for a sentencepiece (`tokenizer.model.v1/.v3`) or tekken lamina tokenizer.

    A conversation may end with an assistant message; its `</s>` is then included (mistral_common
    accepts this only for an assistant prefix, which it leaves without `</s>`).
    """
    version = version or instruct_version(tokenizer)
    if version not in VERSIONS:
        raise UnsupportedError(f"version: expected one of {VERSIONS}, found {version!r}")
    system_prompt, turns = normalize_conversation(messages)
    user_indices = [i for i, (role, _) in enumerate(turns) if role == "user"]
    system_at = user_indices[0] if version == "v1" else user_indices[-1]
    texts: list[str] = []
    for index, (role, content) in enumerate(turns):
        if role == "user":
            if index == system_at and system_prompt:
                content = system_prompt + JOIN + content
            texts.append(f"[INST] {content} [/INST]" if version == "v1" else content)
        else:
            if not content:
                raise InputError(f"messages: assistant turn {index} is empty; mistral_common refuses empty assistant messages")
            texts.append(content if version == "v1" else content.rstrip(" "))
    # mistral_common encodes message text raw: "[INST]" or "</s>" typed by a user stay text
    encoded = tokenizer.engine.encode_batch(texts, split_special_tokens=True)
    bos, eos = tokenizer.convert_tokens_to_ids(["<s>", "</s>"])
    ids = [bos]
    if version != "v1":
        begin, end = tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"])
    for (role, _), text_ids in zip(turns, encoded):
        if role == "assistant":
            ids.extend([*text_ids, eos])
        elif version == "v1":
            ids.extend(text_ids)
        else:
            ids.extend([begin, *text_ids, end])
    return ids

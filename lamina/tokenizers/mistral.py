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
"""

from __future__ import annotations

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
) -> tuple[str | None, list[tuple[str, str]]]:
    """(system prompt or None, [(role, text)]) as mistral_common's normalizer makes them; with
    `systems_in_place` (v7) system messages stay turns of their own and there is no system prompt."""
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
        if role == "system" and not systems_in_place:
            if content:
                system_parts.append(content)
        elif role == previous_role and role != "system":
            turns[-1] = (role, turns[-1][1] + JOIN + content)
        else:
            turns.append((role, content))
        previous_role = role
    if not turns or (turns[0][0] != "user" and not systems_in_place):
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
    system_prompt, turns = normalize_conversation(messages, systems_in_place=version == "v7")
    user_indices = [i for i, (role, _) in enumerate(turns) if role == "user"] or [-1]
    system_at = user_indices[0] if version == "v1" else user_indices[-1]
    texts: list[str] = []
    for index, (role, content) in enumerate(turns):
        if role == "system":
            texts.append(content)
        elif role == "user":
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
    if version == "v7":
        begin_system, end_system = tokenizer.convert_tokens_to_ids(["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"])
    for (role, _), text_ids in zip(turns, encoded):
        if role == "system":
            ids.extend([begin_system, *text_ids, end_system])
        elif role == "assistant":
            ids.extend([*text_ids, eos])
        elif version == "v1":
            ids.extend(text_ids)
        else:
            ids.extend([begin, *text_ids, end])
    return ids

"""Chat templates: Jinja rendered in an immutable sandbox, because templates come with
downloaded files and are untrusted.

The environment offers what transformers' templates use (`raise_exception`, `strftime_now`, a
`tojson` that does not escape HTML, `namespace`, `dict`, loop controls, trimmed blocks) and
nothing else. Any attempt to reach Python internals (`''.__class__`, `x.__globals__`, calling
a mutating method) raises `lamina.errors.SecurityError` at once.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils

from ..errors import InputError, SecurityError, TokenizerError, UnsupportedError


class _ChatSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, but an unsafe attribute raises instead of rendering as undefined."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"chat template: access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed"
        )


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, which could shadow Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat template: namespace attribute {name!r} is not allowed (names may not start with '_')")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # a function, not the `dict` type, so templates cannot reach the type's own attributes
    return dict(*args, **kwargs)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """A chat template compiled in the sandbox (cached by its text)."""
    environment = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        namespace=_TemplateNamespace,
        dict=_make_dict,
    )
    try:
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise TokenizerError(f"chat template: Jinja syntax error on line {err.lineno}: {err.message}") from None


def render_chat(source: str, **variables: Any) -> str:
    """Render `source` with `variables`; sandbox violations become `SecurityError`, the template's
    own `raise_exception` and other rendering errors `InputError`."""
    template = compile_template(source)
    try:
        return template.render(**variables)
    except jinja2.sandbox.SecurityError as err:
        raise SecurityError(f"chat template: {err}") from None
    except jinja2.TemplateError as err:
        # raise_exception(...) in the template, or a template error while rendering these messages
        raise InputError(f"chat template: {err}") from None


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def select_template(tokenizer: Any, chat_template: str | None, tools: list[Any] | None) -> str:
    """The template to use: a name from the tokenizer's set, a template given as text, or the
    tokenizer's own (its `tool_use` one when tools are given, else `default`)."""
    own = tokenizer.chat_template
    if isinstance(own, dict):
        if chat_template in own:
            return own[chat_template]
        if chat_template is None:
            name = "tool_use" if tools is not None and "tool_use" in own else "default"
            if name not in own:
                raise TokenizerError(f"chat_template: the tokenizer has templates {sorted(own)} and none is 'default'; name one")
            return own[name]
    if chat_template is not None:
        return chat_template
    if own is None:
        raise TokenizerError(
            f"{tokenizer.name_or_path or 'tokenizer'}: no chat template (tokenizer_config.json has no "
            "'chat_template' and there is no chat_template.jinja); pass chat_template=..."
        )
    return own


def apply_chat_template(
    tokenizer: Any,
    conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    chat_template: str | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    tokenize: bool = True,
    padding: bool | str = False,
    truncation: bool = False,
    max_length: int | None = None,
    return_tensors: str | None = None,
    return_dict: bool = True,
    tokenizer_kwargs: dict[str, Any] | None = None,
    **template_kwargs: Any,
) -> Any:
    """Render a conversation (a list of `{"role", "content"}` dicts) or a batch of them.

    Returns the rendered text when `tokenize=False`; otherwise the `BatchEncoding` of the text
    (special tokens are taken from the text, none are added) or, with `return_dict=False`, its
    `input_ids`. The defaults are transformers 5's. The template sees `messages`, `tools`,
    `documents`, `add_generation_prompt`, the special tokens by name and `template_kwargs`.
    """
    if not conversation:
        raise InputError("apply_chat_template: the conversation is empty; give at least one message")
    batched = isinstance(conversation[0], (list, tuple))
    conversations = conversation if batched else [conversation]
    if continue_final_message and add_generation_prompt:
        raise InputError("apply_chat_template: continue_final_message and add_generation_prompt exclude each other")
    if tools is not None and any(not isinstance(tool, dict) for tool in tools):
        raise InputError("apply_chat_template: tools must be given as JSON-schema dicts")
    batch_options = dict(
        add_special_tokens=False, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
    )
    if chat_template is None and tokenizer.chat_template is None and "mistral_instruct_version" in tokenizer.extra_config:
        # a Mistral file (tekken.json, tokenizer.model.vN) carries no template: mistral_common's
        # instruct format is the model's chat format (its ids end with [/INST] after a user turn)
        if continue_final_message:
            raise UnsupportedError("apply_chat_template: continue_final_message needs a Jinja chat template here")
        ids = [tokenizer.encode_instruct([_message(m) for m in chat], tools=tools) for chat in conversations]
        if not tokenize:
            texts = tokenizer.batch_decode(ids)
            return texts if batched else texts[0]
        encoding = tokenizer.prepare_batch([(row, None) for row in ids], batched=batched, **batch_options)
        return encoding if return_dict else encoding["input_ids"]
    source = select_template(tokenizer, chat_template, tools)
    variables = {**tokenizer.special_tokens_map, **template_kwargs}
    rendered = []
    for chat in conversations:
        # a key set to None counts as missing, as in transformers (templates test `is defined`)
        messages = [{k: v for k, v in _message(message).items() if v is not None} for message in chat]
        if continue_final_message:
            if not isinstance(messages[-1].get("content"), str):
                raise InputError("apply_chat_template: continue_final_message needs a final message with text content")
            messages[-1]["content"] += CONTINUE_TAG
        text = render_chat(
            source,
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        if continue_final_message:
            cut = text.rfind(CONTINUE_TAG.strip())
            if cut < 0:
                raise TokenizerError("apply_chat_template: the template dropped the final message, which cannot be continued")
            # a template that keeps spacing leaves the tag whole; one that trims it may have eaten the space
            text = text[:cut] if text[cut : cut + len(CONTINUE_TAG)] == CONTINUE_TAG else text[:cut].rstrip()
        rendered.append(text)
    if not tokenize:
        return rendered if batched else rendered[0]
    encoding = tokenizer(rendered if batched else rendered[0], **batch_options, **(tokenizer_kwargs or {}))
    return encoding if return_dict else encoding["input_ids"]


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InputError(f"apply_chat_template: expected messages as dicts, found {type(message).__name__}")
    return dict(message)

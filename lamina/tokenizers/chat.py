"""Chat templates: Jinja rendered in an immutable sandbox, because templates come with
downloaded files and are untrusted code.

The environment offers what transformers' templates use (`raise_exception`, `strftime_now`, a
`tojson` that does not escape HTML, `namespace`, `dict`, loop controls, trimmed blocks) and
nothing else. Any attempt to reach Python internals (`''.__class__`, `x.__globals__`, calling
a mutating method) raises `lamina.errors.SecurityError` at once.

A render is also bounded in size and time, so a template cannot exhaust the machine: every value
the template makes (a `*`, `+`, `%` or `~`, a filter's or a method's result, a namespace
attribute, a buffered block, the output) may weigh at most `max_rendered_chars` characters
(default `DEFAULT_MAX_RENDERED_CHARS`), checked *before* an operation that could allocate more,
and the render stops after `render_timeout` seconds (default `DEFAULT_RENDER_TIMEOUT`). Both are
arguments of `apply_chat_template`. Every refusal, like Jinja's own (`range` over 100,000 items)
and unbounded macro recursion, is a `SecurityError` naming where the template came from.
"""

from __future__ import annotations

import functools
import json
import re
import string
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any, NoReturn

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

from ..errors import InputError, SecurityError, TokenizerError, UnsupportedError


DEFAULT_MAX_RENDERED_CHARS = 4_000_000  # well above a 1M-token conversation's text
DEFAULT_RENDER_TIMEOUT = 5.0  # seconds; real templates render in milliseconds
# json.dumps(indent=...) repeats the indent on every line of every nesting level
MAX_TOJSON_INDENT = 32
# the filters and string methods whose integer arguments are sizes of what they make
SIZE_ARGUMENTS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "truncate", "wordwrap",
                            "batch", "slice", "tojson"})
COMPILED_NAME = "<template>"  # the file name Jinja compiles `from_string` templates under


@dataclass
class _Budget:
    """The limits of the render in progress (each render sets its own)."""

    max_chars: int
    timeout: float
    deadline: float


_BUDGET: ContextVar[_Budget] = ContextVar("chat_template_budget")


def _refuse(message: str) -> NoReturn:
    raise jinja2.sandbox.SecurityError(message)


def _weight(value: Any, limit: int) -> int:
    """The characters `value` renders to, at least: a string's length, a container's items plus
    one per item (shared items count each time, as `str()` repeats them), an int's digits;
    counted only until `limit` is passed, so a huge or self-referencing value costs little."""
    total, pending, steps = 0, [value], 0
    while pending and total <= limit:
        item = pending.pop()
        steps += 1
        if steps % 65536 == 0:
            _check_time()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            pending.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, jinja2.utils.Namespace):
            pending.append(item._Namespace__attrs)  # type: ignore[attr-defined]
    return total


def _check_time() -> _Budget:
    budget = _BUDGET.get()
    if time.monotonic() > budget.deadline:
        _refuse(f"rendering ran longer than {budget.timeout} s (render_timeout)")
    return budget


def _check(value: Any, what: str) -> Any:
    """`value`, once it is known to weigh no more than the budget and time remains."""
    budget = _check_time()
    if _weight(value, budget.max_chars) > budget.max_chars:
        _refuse(f"{what} would exceed {budget.max_chars:,} characters (max_rendered_chars)")
    return value


def _check_size(size: int, what: str) -> None:
    budget = _BUDGET.get()
    if size > budget.max_chars:
        _refuse(f"{what} would exceed {budget.max_chars:,} characters (max_rendered_chars)")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _format_widths(fmt: str, percent: bool, arguments: list[Any]) -> int:
    """The characters a format string's widths and precisions may add (`'%9s'`, `'{:>9}'`); one
    taken from the arguments (`*`, `{:{w}}`) counts as the largest integer argument."""
    largest = max((a for a in arguments if isinstance(a, int) and not isinstance(a, bool)), default=0)
    if percent:
        fields = [n for spec in _PERCENT_SPEC.findall(fmt) for n in spec if n]
    else:
        try:
            specs = [spec for _, name, spec, _ in string.Formatter().parse(fmt) if name is not None and spec]
        except ValueError:  # a malformed format string: str.format will say so itself
            return 0
        fields = [n for spec in specs for n in re.findall(r"\d+|\{[^}]*\}", spec)]
    return sum(largest if not n.isdigit() else int(n) for n in fields)


def _check_growth(name: str, subject: Any, arguments: list[Any], keywords: dict[str, Any]) -> None:
    """Refuse a call whose arguments would make it allocate past the budget. `subject` is the
    string a method is bound to or a filter's input; each argument must itself fit the budget, and
    so must the integer arguments of `SIZE_ARGUMENTS` (widths, lengths, counts)."""
    budget = _BUDGET.get()
    values = [*arguments, *keywords.values()]
    for value in values:
        sized = name in SIZE_ARGUMENTS and isinstance(value, int) and not isinstance(value, bool)
        if sized and abs(value) > budget.max_chars:
            _refuse(f"{name}: argument {value} is larger than {budget.max_chars:,} (max_rendered_chars)")
        _check(value, f"{name}'s argument")
    _check(subject, f"{name}'s input")
    if not isinstance(subject, str):
        return
    if name == "replace" and len(arguments) >= 2 and isinstance(arguments[0], str) and isinstance(arguments[1], str):
        old, new = arguments[0], arguments[1]
        _check_size(len(subject) + (subject.count(old) + (not old)) * len(new), f"{name}()")
    elif name == "indent":
        width = arguments[0] if arguments else keywords.get("width", 4)
        per_line = len(width) if isinstance(width, str) else int(width)
        _check_size(len(subject) + (subject.count("\n") + 1) * per_line, f"{name}()")
    elif name == "expandtabs":
        tab = arguments[0] if arguments else keywords.get("tabsize", 8)
        _check_size(len(subject) + subject.count("\t") * int(tab), f"{name}()")
    elif name in ("format", "format_map"):
        _check_size(len(subject) + _format_widths(subject, False, values), f"{name}()")


def _joined_size(separator: str, items: list[Any]) -> int:
    budget = _BUDGET.get()
    total = len(separator) * max(len(items) - 1, 0)
    for item in items:
        total += _weight(item, budget.max_chars)
        if total > budget.max_chars:
            break
    return total


class _BoundedCodeGenerator(jinja2.compiler.CodeGenerator):
    """Jinja's code generator, with `a ~ b` weighed before its operands are turned into text."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.tilde_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _ChatSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, but an unsafe attribute raises instead of rendering as undefined,
    and every operation that can grow a value is bounded by the render's budget."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=lambda value: _check(value, "an output expression"), **options)
        del self.globals["lipsum"]  # lorem ipsum of any length, and no template needs it
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        _refuse(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def concat(self, pieces: Iterable[str]) -> str:
        """The text of a block, a macro or the whole output, given piece by piece."""
        kept, total = [], 0
        for piece in pieces:
            total += len(piece)
            _check_size(total, "the rendered text")
            kept.append(piece)
        _check(None, "the rendered text")  # the deadline, for blocks that output nothing
        return "".join(kept)

    def tilde_concat(self, operands: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`: the operands' text joined."""
        _check(operands, "a '~' concatenation")
        return "".join(map(str, operands))

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(times, int) and isinstance(sequence, (str, list, tuple)):
                    _check_size(_weight(sequence, _BUDGET.get().max_chars) * max(times, 0), "a '*' repetition")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _check_size(left.bit_length() * right // 3, "a '**' power")
        elif operator == "%" and isinstance(left, str):
            arguments = list(right) if isinstance(right, tuple) else [right]
            _check_growth("%", left, arguments, {})
            _check_size(len(left) + _format_widths(left, True, arguments), "a '%' format")
        return _check(super().call_binop(context, operator, left, right), f"a {operator!r} operation")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        bound_to = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "a call")
        if isinstance(bound_to, str) and name == "join" and args:
            items = list(args[0])
            _check_size(_joined_size(bound_to, items), "join()")
            args = (items, *args[1:])
        _check_growth(name, bound_to, list(args), kwargs)
        return _check(super().call(__context, __obj, *args, **kwargs), f"{name}()")


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a Jinja filter) with its arguments weighed first and its result after."""
    # a filter marked pass_context / pass_environment / pass_eval_context gets that first
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        passed, (subject, *rest) = list(args[:skip]), args[skip:]
        if name == "join":
            subject = list(subject)
            separator = rest[0] if rest else kwargs.get("d", "")
            _check_size(_joined_size(str(separator), subject), "the join filter")
        _check_growth(name, subject, rest, kwargs)
        if name == "format" and isinstance(subject, str):
            _check_size(len(subject) + _format_widths(subject, True, [*rest, *kwargs.values()]), "the format filter")
        return _check(function(*passed, subject, *rest, **kwargs), f"the {name} filter")

    return bounded


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, which could shadow Python internals, and
    values past the render's budget (a namespace carries values across loop iterations)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name, value in attributes.items():
            _check_name(name)
            _check(value, f"namespace attribute {name!r}")
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        _check(value, f"namespace attribute {name!r}")
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        _refuse(f"namespace attribute {name!r} is not allowed (names may not start with '_')")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    if indent is not None and (len(indent) if isinstance(indent, str) else indent) > MAX_TOJSON_INDENT:
        _refuse(f"tojson: indent {indent!r} is wider than {MAX_TOJSON_INDENT}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # a function, not the `dict` type, so templates cannot reach the type's own attributes
    return dict(*args, **kwargs)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """A chat template compiled in the sandbox (cached by its text); raises Jinja's
    `TemplateSyntaxError`."""
    environment = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _bounded_filter("tojson", _tojson)
    environment.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        namespace=_TemplateNamespace,
        dict=_make_dict,
    )
    return environment.from_string(source)


@contextmanager
def _deadline_in_loops() -> Iterator[None]:
    """Stop the template's own code when the budget's time is up: a loop that makes nothing (no
    call, no output) is seen only line by line, by a trace function on the template's frames."""
    previous = sys.gettrace()

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        _check_time()
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == COMPILED_NAME else None

    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def render_chat(
    source: str,
    origin: str = "chat template",
    max_rendered_chars: int = DEFAULT_MAX_RENDERED_CHARS,
    render_timeout: float = DEFAULT_RENDER_TIMEOUT,
    **variables: Any,
) -> str:
    """Render `source` (read from `origin`, named in errors) with `variables` within the size and
    time budget; refusals and sandbox violations become `SecurityError`, a syntax error
    `TokenizerError`, the template's own `raise_exception` and other failures `InputError`."""
    budget = _Budget(max_rendered_chars, render_timeout, time.monotonic() + render_timeout)
    token = _BUDGET.set(budget)
    try:
        template = compile_template(source)
        with _deadline_in_loops():
            return template.render(**variables)
    except jinja2.TemplateSyntaxError as err:
        raise TokenizerError(f"{origin}: Jinja syntax error on line {err.lineno}: {err.message}") from None
    # the sandbox's refusals: its own (unsafe attributes, range over MAX_RANGE items) and the budget's
    except jinja2.sandbox.SecurityError as err:
        raise SecurityError(f"{origin}: refused: {err}") from None
    except (OverflowError, RecursionError, MemoryError) as err:
        raise SecurityError(f"{origin}: refused: {type(err).__name__}: {err}") from None
    except jinja2.TemplateError as err:
        # raise_exception(...) in the template, or a template error while rendering these messages
        raise InputError(f"{origin}: {err}") from None
    except Exception as err:  # the template's own mistake on these messages (1 / 0, 'a' + 1, …)
        raise InputError(f"{origin}: rendering failed ({type(err).__name__}: {err})") from None
    finally:
        _BUDGET.reset(token)


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
    max_rendered_chars: int = DEFAULT_MAX_RENDERED_CHARS,
    render_timeout: float = DEFAULT_RENDER_TIMEOUT,
    **template_kwargs: Any,
) -> Any:
    """Render a conversation (a list of `{"role", "content"}` dicts) or a batch of them.

    Returns the rendered text when `tokenize=False`; otherwise the `BatchEncoding` of the text
    (special tokens are taken from the text, none are added) or, with `return_dict=False`, its
    `input_ids`. The defaults are transformers 5's. The template sees `messages`, `tools`,
    `documents`, `add_generation_prompt`, the special tokens by name and `template_kwargs`.
    The template is untrusted code: its render may make values of at most `max_rendered_chars`
    characters and run `render_timeout` seconds, else `SecurityError` (see the module's doc).
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
    origin = template_origin(tokenizer, source)
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
            origin,
            max_rendered_chars,
            render_timeout,
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


def template_origin(tokenizer: Any, source: str) -> str:
    """Where `source` came from, for errors: the tokenizer's file when it is the tokenizer's own
    template (`chat_template_file`, set by the loaders), else the `chat_template` argument."""
    own = tokenizer.chat_template
    if source == own or isinstance(own, dict) and source in own.values():
        return f"chat template of {tokenizer.chat_template_file or tokenizer.name_or_path or 'the tokenizer'}"
    return "the chat_template argument"


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InputError(f"apply_chat_template: expected messages as dicts, found {type(message).__name__}")
    return dict(message)

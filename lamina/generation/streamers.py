"""Streamers: `generate(..., streamer=s)` calls `s.put(tokens)` with the prompt, then with each
new token, and `s.end()` once at the end. These turn the tokens into text as they arrive.

Text goes out as transformers' streamers emit it: the streamer decodes every token since the last
line break (whose token it keeps, for the spacing of what follows) and emits what grew, at once
when that is letters, digits and spaces, after a line break or a CJK character, and otherwise up
to the last space (a symbol may open markup that later tokens complete). A decode ending in U+FFFD is an
incomplete multi-byte character (tekken and byte-fallback vocabularies split UTF-8 over tokens):
it is held back until the following tokens complete it.
"""

from __future__ import annotations

import queue
import sys
import unicodedata
from typing import Any, TextIO

import torch

from ..errors import InputError

_REPLACEMENT = "\ufffd"


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def _is_plain(text: str) -> bool:
    """Letters (with their marks), digits and spaces: safe to emit at once. Anything else (a
    symbol, which may open markup such as `<br>`) waits for the next space."""
    return all(char.isspace() or unicodedata.category(char)[0] in "LMN" for char in text)


class TextStreamer:
    """Prints decoded text to `stream` (stdout) as it is generated; batch size 1.

    `skip_prompt`: do not print the prompt; `decode_kwargs` go to `tokenizer.decode`
    (e.g. `skip_special_tokens=True`).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, stream: TextIO | None = None, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.stream = stream
        self.decode_kwargs = decode_kwargs
        self._tokens: list[int] = []
        self._printed = 0
        self._prompt_next = True

    def put(self, value: torch.Tensor) -> None:
        """`value`: the prompt `(1, prompt)` first, then one token `(1,)` per step."""
        if value.dim() > 1 and value.shape[0] > 1:
            raise InputError(f"{type(self).__name__} streams one sequence; found a batch of {value.shape[0]}")
        if self._prompt_next:
            self._prompt_next = False
            if self.skip_prompt:
                return
        self._tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self._tokens, **self.decode_kwargs)
        if text.endswith("\n"):
            ready = text[self._printed :]
            # the line break's token stays as context: the next token's leading space survives
            self._tokens = self._tokens[-1:]
            self._printed = len(self.tokenizer.decode(self._tokens, **self.decode_kwargs))
        elif text.endswith(_REPLACEMENT):
            return
        elif text and _is_cjk(text[-1]) or _is_plain(text[self._printed :]):
            ready = text[self._printed :]
            self._printed += len(ready)
        else:
            ready = text[self._printed : text.rfind(" ") + 1]
            self._printed += len(ready)
        if ready:
            self.on_finalized_text(ready)

    def end(self) -> None:
        """Emit whatever is held back and close the stream of text."""
        ready = ""
        if self._tokens:
            ready = self.tokenizer.decode(self._tokens, **self.decode_kwargs)[self._printed :]
        self._tokens, self._printed = [], 0
        self._prompt_next = True
        self.on_finalized_text(ready, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + ("\n" if stream_end else ""))
        stream.flush()


class TextIteratorStreamer(TextStreamer):
    """Hands the text to another thread: run `generate` in a thread and iterate over this object
    to receive the pieces. `timeout` (seconds) bounds each wait for the next piece."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue[str | None] = queue.Queue()
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(None, timeout=self.timeout)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        piece = self.text_queue.get(timeout=self.timeout)
        if piece is None:
            raise StopIteration
        return piece

"""Incremental detokenization for streaming generation.

A token can be part of a character: byte-fallback pieces (`<0xE4>`) and tekken's multi-byte
tokens split UTF-8 sequences, so decoding token by token would print replacement characters.
`IncrementalDetokenizer` decodes a short window of recent ids, emits only the text that the
newest ids add, and holds text back while it ends in an incomplete character.
"""

from __future__ import annotations

from typing import Any

from .base import flatten_ids

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas whose concatenation is `tokenizer.decode(all ids)`
    (for tokenizers whose decoding is position independent after the first token).

    `push(ids)` takes one id, a list or a 1-d tensor, and returns the newly complete text (maybe
    ""); `flush()` returns whatever is held back, replacement characters included, and resets.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        # text is decoded from `window_start`; everything before `emitted_end` has been emitted
        self.window_start = 0
        self.emitted_end = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False)

    def push(self, token_ids: Any) -> str:
        self.ids.extend(flatten_ids(token_ids))
        # decoding from the previous emission's first token keeps the context (a word's leading
        # space, a pending byte sequence) that decoding the new ids alone would lose
        before = self._decode(self.ids[self.window_start : self.emitted_end])
        now = self._decode(self.ids[self.window_start :])
        if len(now) <= len(before) or now.endswith(_REPLACEMENT) or not now.startswith(before):
            return ""
        self.window_start, self.emitted_end = self.emitted_end, len(self.ids)
        return now[len(before) :]

    def flush(self) -> str:
        before = self._decode(self.ids[self.window_start : self.emitted_end])
        now = self._decode(self.ids[self.window_start :])
        self.ids.clear()
        self.window_start = self.emitted_end = 0
        return now[len(before) :]

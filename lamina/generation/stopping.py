"""Stopping criteria: each maps `(input_ids (batch, seq), scores (batch, vocab))` to a bool tensor
`(batch,)` saying which rows are done, as transformers' `StoppingCriteria` do. A row that is done
keeps the token that ended it and is padded after it.

`generate` ends rows at their end tokens by itself; `build_stopping_criteria` adds the others a
config or caller asks for: `max_time`, `stop_strings` (which need the tokenizer) and the caller's
own `stopping_criteria`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import InputError
from .config import GenerationConfig


class StoppingCriteria:
    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.BoolTensor:
        raise NotImplementedError


class StoppingCriteriaList(list):
    """A row is done when any of its criteria says so."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criteria in self:
            done = done | criteria(input_ids, scores, **kwargs).to(done.device)
        return done


class MaxTimeCriteria(StoppingCriteria):
    """Every row is done once `max_time` seconds have passed since `initial_timestamp` (by default,
    since this object was made)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None) -> None:
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids, scores, **kwargs):
        late = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), late, dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """A row is done when its last token is one of `eos_token_ids`."""

    def __init__(self, eos_token_ids: list[int]) -> None:
        self.eos_token_ids = eos_token_ids

    def __call__(self, input_ids, scores, **kwargs):
        ids = torch.tensor(self.eos_token_ids, dtype=torch.long, device=input_ids.device)
        return torch.isin(input_ids[:, -1], ids)


class StopStringCriteria(StoppingCriteria):
    """A row is done when one of `stop_strings` ends inside its last token: the text may go on past
    the string's end within that token, and the string may begin in earlier tokens (the prompt's
    included), as transformers' criterion decides.

    The text is the tokenizer's decoding of the row's last tokens, enough of them to hold the longest
    string plus the last token (every token decodes to at least one character but special ones)."""

    def __init__(self, tokenizer: Any, stop_strings: str | list[str]) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise InputError(f"generate: stop_strings must be non-empty strings, found {stop_strings!r}")
        self.tokenizer = tokenizer
        self.stop_strings = list(stop_strings)
        self.window = max(len(s) for s in self.stop_strings) + 2

    def _row_done(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens)
        before = self.tokenizer.decode(tokens[:-1])
        if not text.startswith(before):
            before = before.rstrip()  # a decoder that cleans up the end of a text differently
        last_start = len(before)
        for stop in self.stop_strings:
            # the last occurrence that could end inside the last token
            found = text.rfind(stop, max(0, last_start - len(stop) + 1))
            if found != -1 and found + len(stop) > last_start:
                return True
        return False

    def __call__(self, input_ids, scores, **kwargs):
        rows = input_ids[:, -self.window:].tolist()
        return torch.tensor([self._row_done(row) for row in rows], dtype=torch.bool, device=input_ids.device)


def build_stopping_criteria(
    config: GenerationConfig, tokenizer: Any = None, custom: list[StoppingCriteria] | None = None
) -> StoppingCriteriaList:
    """The criteria besides end tokens and length that `config` and the caller ask for (empty when
    none: `generate` then checks nothing on the host). `tokenizer` is needed for `stop_strings`."""
    criteria = StoppingCriteriaList()
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time))
    if config.stop_strings is not None:
        if tokenizer is None:
            raise InputError("generate: stop_strings need the tokenizer; pass tokenizer=... to generate")
        criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
    criteria.extend(custom or [])
    return criteria

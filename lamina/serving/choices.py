"""One choice of a completion: the engine's tokens turned into text, cut at stop strings.

Text is released as soon as it cannot turn out to be the start of a stop string (and is not an
incomplete character); a stop string found ends the choice with finish_reason "stop" and is not part
of the text, as in OpenAI's API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..tokenizers.streaming import IncrementalDetokenizer
from .engine import Finished, TokenEvent


@dataclass
class TokenLogprob:
    """A generated token's text and log-probability, and the most likely alternatives'."""

    text: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Choice:
    index: int
    tokenizer: Any
    stop: list[str]
    stop_token_ids: tuple[int, ...]
    text: str = ""  # the text so far, stop strings cut
    sent: int = 0  # characters of `text` already released
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.detokenizer = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=True)

    def take(self, event: TokenEvent | Finished) -> tuple[str, list[TokenLogprob]]:
        """Feed one engine event; returns the text it releases and its log-probabilities."""
        if self.finish_reason is not None:
            return "", []  # tokens that were already on their way when a stop string ended the choice
        if isinstance(event, Finished):
            self.text += self.detokenizer.flush()
            if event.reason == "error":
                self.error = event.message or "the engine failed"
            self._cut_at_stop()
            self.finish_reason = self.finish_reason or ("stop" if event.reason == "stop" else "length")
            return self._release(len(self.text)), []
        self.tokens += 1
        entries = []
        if event.logprob is not None:
            entries.append(TokenLogprob(self._token_text(event.token), event.logprob,
                                        [(self._token_text(t), lp) for t, lp in event.top_logprobs or []]))
            self.logprobs.extend(entries)
        if event.token not in self.stop_token_ids:
            self.text += self.detokenizer.push(event.token)
        if self._cut_at_stop():
            return self._release(len(self.text)), entries
        return self._release(len(self.text) - self._held_back()), entries

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _cut_at_stop(self) -> bool:
        found = [position for position in (self.text.find(s) for s in self.stop) if position >= 0]
        if not found:
            return False
        self.text = self.text[: min(found)]
        self.finish_reason = "stop"
        return True

    def _held_back(self) -> int:
        """Characters at the end of the text that could be the start of a stop string."""
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:n])), default=0)

    def _release(self, end: int) -> str:
        end = max(end, self.sent)
        delta, self.sent = self.text[self.sent : end], end
        return delta

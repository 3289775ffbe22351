"""Logits processors: each maps `(input_ids (batch, seq), scores (batch, vocab))` to new scores,
on the scores' device, with no host synchronisation. Removed tokens get `-inf`.

The order `build_processors` applies them is transformers' order, so sampling sees the same
distribution: sequence bias, repetition penalty, no-repeat n-grams, bad words, minimum length,
suppressed tokens, the caller's processors, then (sampling only) temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .config import GenerationConfig

FILTERED = -float("inf")


class LogitsProcessor:
    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogitsProcessorList(list):
    """Applies its processors in order."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Makes every token already in `input_ids` less likely: positive scores are divided by the
    penalty, negative ones multiplied (so both move down for a penalty > 1).

    `padding_lengths (batch,)`: leading (left-padding) columns of each row that do not count.
    """

    def __init__(self, penalty: float, padding_lengths: torch.Tensor | None = None) -> None:
        self.penalty = penalty
        self.padding_lengths = padding_lengths

    def __call__(self, input_ids, scores):
        vocab = scores.shape[-1]
        ids = input_ids.clamp(max=vocab)
        if self.padding_lengths is not None:
            columns = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(columns[None] < self.padding_lengths.to(ids.device)[:, None], vocab)
        # column `vocab` collects the ids that do not count
        seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device).scatter_(1, ids, True)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :vocab], penalized, scores)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Forbids the end-of-sequence tokens while the sequence (prompt included) is shorter than
    `min_length`; `min_new_tokens` is `min_length = prompt length + min_new_tokens`."""

    def __init__(self, min_length: int, eos_token_ids: list[int]) -> None:
        self.min_length = min_length
        self.eos_token_ids = eos_token_ids

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] >= self.min_length:
            return scores
        scores = scores.clone()
        scores[:, self.eos_token_ids] = FILTERED
        return scores


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Adds a bias to the last token of each given token sequence when the tokens before it end the
    input; a one-token sequence is biased everywhere.

    `sequence_bias`: `{(ids…): bias}` or transformers' list form `[[ids…], bias]`.
    """

    def __init__(self, sequence_bias: dict[tuple[int, ...], float] | list[list[Any]], name: str = "sequence_bias") -> None:
        self.name = name
        self.biases = _sequence_biases(sequence_bias, name)
        self._prepared: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None

    def _prepare(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """The bias of one-token sequences `(vocab,)`, and per prefix length: prefixes `(n, length)`,
        their last tokens `(n,)` and biases `(n,)`."""
        too_large = sorted({t for ids in self.biases for t in ids if t >= vocab})
        if too_large:
            raise ConfigError(f"generation config {self.name}: token ids {too_large} are outside the vocabulary of {vocab}")
        single = torch.zeros(vocab, device=device)
        by_length: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for ids, bias in self.biases.items():
            if len(ids) == 1:
                single[ids[0]] = bias
            else:
                by_length.setdefault(len(ids) - 1, []).append((ids, bias))
        groups = [
            (torch.tensor([ids[:-1] for ids, _ in group], device=device),
             torch.tensor([ids[-1] for ids, _ in group], device=device),
             torch.tensor([bias for _, bias in group], device=device))
            for group in by_length.values()
        ]
        return single, groups

    def __call__(self, input_ids, scores):
        if self._prepared is None:
            self._prepared = self._prepare(scores.shape[-1], scores.device)
        single, groups = self._prepared
        bias = single.expand_as(scores).clone()
        for prefixes, last_tokens, biases in groups:
            if prefixes.shape[1] > input_ids.shape[1]:
                continue
            # (batch, n): does row b end with prefix n?
            ends_with = (input_ids[:, None, -prefixes.shape[1]:] == prefixes).all(dim=-1)
            bias.index_add_(1, last_tokens, torch.where(ends_with, biases, 0.0))
        return scores + bias


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Forbids each token sequence of `bad_words_ids`: its last token gets `-inf` wherever the others
    end the input. A bad word that is just an end token is dropped, as in transformers."""

    def __init__(self, bad_words_ids: list[list[int]], eos_token_ids: list[int]) -> None:
        if not isinstance(bad_words_ids, list) or not bad_words_ids or not all(isinstance(w, list) for w in bad_words_ids):
            raise ConfigError(f"generation config bad_words_ids: expected a non-empty list of lists of token ids, found {bad_words_ids!r}")
        kept = [words for words in bad_words_ids if not any(words == [eos] for eos in eos_token_ids)]
        super().__init__({tuple(words): FILTERED for words in kept}, name="bad_words_ids")


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbids any token that would complete an n-gram of `ngram_size` tokens already in the row
    (prompt and padding included, as in transformers)."""

    def __init__(self, ngram_size: int) -> None:
        self.ngram_size = ngram_size

    def __call__(self, input_ids, scores):
        n = self.ngram_size
        length = input_ids.shape[1]
        if length < n:
            return scores
        last = input_ids[:, length - n + 1:]  # (batch, n - 1): what the next token would follow
        ngrams = input_ids.unfold(1, n, 1)  # (batch, length - n + 1, n)
        repeats = (ngrams[..., :-1] == last[:, None]).all(dim=-1)
        vocab = scores.shape[-1]
        # column `vocab` collects the n-grams that do not repeat
        banned_ids = torch.where(repeats, ngrams[..., -1].clamp(max=vocab), vocab)
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device).scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :vocab], FILTERED)


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Forbids `suppress_tokens` at every step, or, with `at_length`, only at the step whose input
    has that many tokens (transformers' `begin_suppress_tokens`: the first generated token)."""

    def __init__(self, suppress_tokens: list[int], at_length: int | None = None) -> None:
        self.suppress_tokens = [int(t) for t in suppress_tokens]
        self.at_length = at_length

    def __call__(self, input_ids, scores):
        if self.at_length is not None and input_ids.shape[-1] != self.at_length:
            return scores
        ids = torch.tensor(self.suppress_tokens, device=scores.device, dtype=torch.long)
        suppressed = torch.isin(torch.arange(scores.shape[-1], device=scores.device), ids)
        return scores.masked_fill(suppressed, FILTERED)


def _sequence_biases(sequence_bias: Any, name: str) -> dict[tuple[int, ...], float]:
    """`{(ids…): bias}` from either of transformers' forms, checked."""
    if isinstance(sequence_bias, list):
        if not all(isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], list) for item in sequence_bias):
            raise ConfigError(f"generation config {name}: expected [[token ids], bias] pairs, found {sequence_bias!r}")
        sequence_bias = {tuple(ids): bias for ids, bias in sequence_bias}
    if not isinstance(sequence_bias, dict) or not sequence_bias:
        raise ConfigError(f"generation config {name}: expected a non-empty dict or list, found {sequence_bias!r}")
    for ids, bias in sequence_bias.items():
        if not isinstance(ids, tuple) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ConfigError(f"generation config {name}: expected non-empty tuples of token ids >= 0 as keys, found {ids!r}")
        if not isinstance(bias, float):
            raise ConfigError(f"generation config {name}: expected a float bias for {ids}, found {bias!r}")
    return dict(sequence_bias)


class TemperatureLogitsWarper(LogitsProcessor):
    """Divides the scores by `temperature`: one number, or a column `(batch, 1)` of each row's own."""

    def __init__(self, temperature: float | torch.Tensor) -> None:
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keeps the `top_k` highest scores (ties with the k-th kept too)."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, FILTERED)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keeps the smallest set of most likely tokens whose probability reaches
    `top_p`. Computed from the least likely end: a token goes when the mass at or below it is at
    most 1 - top_p. `top_p` is one number, or a column `(batch, 1)` of each row's own."""

    def __init__(self, top_p: float | torch.Tensor, min_tokens_to_keep: int = 1) -> None:
        self.top_p = top_p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        ascending, order = torch.sort(scores, descending=False)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_below <= 1 - self.top_p
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, FILTERED)


class MinPLogitsWarper(LogitsProcessor):
    """Drops tokens whose probability is below `min_p` times the most likely token's."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        self.min_p = min_p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        probs = scores.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        best = torch.topk(scores, self.min_tokens_to_keep, dim=-1).indices
        drop = drop.scatter(1, best, False)
        return scores.masked_fill(drop, FILTERED)


def build_processors(
    config: GenerationConfig, attention_mask: torch.Tensor, custom: list[LogitsProcessor] | None = None
) -> LogitsProcessorList:
    """The processors `config` asks for, in transformers' order (warpers only when sampling);
    `attention_mask (batch, prompt)` of the left-padded prompt; `custom`: the caller's processors,
    which run before the warpers."""
    processors = LogitsProcessorList()
    prompt_length = attention_mask.shape[1]
    if config.sequence_bias is not None:
        processors.append(SequenceBiasLogitsProcessor(config.sequence_bias))
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        padding_lengths = (attention_mask != 0).int().argmax(dim=1)
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, padding_lengths))
    if config.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, config.eos_token_ids))
    if config.min_length and config.eos_token_ids:
        processors.append(MinLengthLogitsProcessor(config.min_length, config.eos_token_ids))
    if config.min_new_tokens and config.eos_token_ids:
        processors.append(MinLengthLogitsProcessor(prompt_length + config.min_new_tokens, config.eos_token_ids))
    if config.suppress_tokens is not None:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    if config.begin_suppress_tokens is not None:
        processors.append(SuppressTokensLogitsProcessor(config.begin_suppress_tokens, at_length=prompt_length))
    processors.extend(custom or [])
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        # beam sampling keeps a token besides the end tokens, so every beam can go on
        keep = max(2, len(config.eos_token_ids) + 1) if config.num_beams > 1 else 1
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k, keep))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p, keep))
        if config.min_p is not None:
            processors.append(MinPLogitsWarper(config.min_p, keep))
    return processors

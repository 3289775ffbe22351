"""Logits processors: each maps `(input_ids (batch, seq), scores (batch, vocab))` to new scores,
on the scores' device, with no host synchronisation. Removed tokens get `-inf`.

The order `build_processors` applies them is transformers' order, so sampling sees the same
distribution: repetition penalty, minimum length, then (sampling only) temperature, top-k, top-p,
min-p.
"""

from __future__ import annotations

import torch

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


class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float) -> None:
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
    most 1 - top_p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
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


def build_processors(config: GenerationConfig, attention_mask: torch.Tensor) -> LogitsProcessorList:
    """The processors `config` asks for, in transformers' order (warpers only when sampling);
    `attention_mask (batch, prompt)` of the left-padded prompt."""
    processors = LogitsProcessorList()
    prompt_length = attention_mask.shape[1]
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        padding_lengths = (attention_mask != 0).int().argmax(dim=1)
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, padding_lengths))
    if config.min_length and config.eos_token_ids:
        processors.append(MinLengthLogitsProcessor(config.min_length, config.eos_token_ids))
    if config.min_new_tokens and config.eos_token_ids:
        processors.append(MinLengthLogitsProcessor(prompt_length + config.min_new_tokens, config.eos_token_ids))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        if config.min_p is not None:
            processors.append(MinPLogitsWarper(config.min_p))
    return processors

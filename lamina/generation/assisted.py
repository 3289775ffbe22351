"""Assisted (speculative) decoding: `generate(..., assistant_model=draft)`, greedy or sampled.

A round: the draft model proposes up to `num_assistant_tokens` tokens one at a time (cheap), then
the target model scores the last accepted token and every proposal in one forward pass. Greedy: the
target's own choice at each position is kept while it agrees with the proposal, plus its choice at
the first disagreement (or after the last proposal), so each round yields 1 to k + 1 tokens and the
output is exactly the target's greedy output. Sampled (`do_sample=True`, speculative sampling as in
transformers, Leviathan et al. 2023 algorithm 1): the draft draws each proposal x from its processed
distribution q; the target accepts it with probability min(1, p(x) / q(x)) under its own processed
distribution p, and at the first rejection draws from the residual max(p - q, 0) renormalised (after
the last proposal, from p), so every token follows the target's distribution whatever the draft. With `num_assistant_tokens_schedule="heuristic"` the
proposal length grows by 2 after a round where every proposal was accepted and shrinks by 1
otherwise, as in transformers.

Both models keep caches whose every layer is static (sliding-window layers included: their window
comes from the mask), so rejecting proposals only moves each cache's token count back; the slots past
it are written again before any query can see them. Several tokens at once go through the model's
`forward`; the draft's one-token steps go through its decode step (lamina's native step on the CPU
where the model allows, as in plain `generate`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..cache import Cache, make_cache
from ..errors import InputError, UnsupportedError
from . import decoding
from .config import GenerationConfig
from .processors import LogitsProcessorList
from .step import decode_steps
from .stopping import StoppingCriteriaList


def _static_cache(model: Any, capacity: int) -> Cache:
    spec = getattr(model.base_model, "decoder_spec", None)
    if spec is None:
        raise UnsupportedError(f"generate: assisted decoding needs a lamina decoder, found {type(model).__name__}")
    return make_cache([None] * len(spec.layer_windows), "static", capacity)


class _Runner:
    """One model's forward over the run's tokens, with a cache holding its first `seen` tokens."""

    def __init__(self, model: Any, run: Any, capacity: int, config: GenerationConfig, padded: bool) -> None:
        self.model = model
        self.run = run
        self.cache = _static_cache(model, capacity)
        self.seen = 0
        self.step, _ = decode_steps(model).step(config, compiled=False)
        self.step_mask = run.mask if padded else None

    def next_logits(self, length: int) -> torch.Tensor:
        """The logits `(batch, vocab)` after the run's first `length` tokens."""
        start = self.seen
        if self.step is None or length - start != 1:
            return self.logits(length, 1)[:, -1]
        run = self.run
        logits = self.step(run.tokens[:, start:length], run.positions[:, start:length].clone(),
                           run.slots[start:length].clone(), self.step_mask, self.cache).float()
        self.cache.advance(1)
        self.seen = length
        return logits

    def logits(self, length: int, keep: int) -> torch.Tensor:
        """Feed the run's tokens from `seen` to `length`; the logits `(batch, keep, vocab)` after the
        last `keep` of them."""
        run, start = self.run, self.seen
        inputs = self.model.prepare_inputs_for_generation(
            run.tokens[:, start:length], run.mask[:, :length], run.positions[:, start:length],
            self.cache, run.slots[start:length],
        )
        inputs["logits_to_keep"] = keep
        logits = self.model(**inputs).logits.float()
        self.seen = length
        return logits

    def forget_after(self, length: int) -> None:
        """Only the first `length` tokens are still valid."""
        self.seen = min(self.seen, length)
        self.cache.seen_tokens = self.seen


def assisted_generate(
    model: Any,
    assistant: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    processors: LogitsProcessorList,
    stopping: StoppingCriteriaList,
    streamer: Any,
    generator: torch.Generator | None = None,
) -> torch.LongTensor | Any:
    """The target `model`'s continuation of `input_ids (1, prompt)` (greedy, or drawn with `generator`),
    proposed by `assistant`."""
    rows = input_ids.shape[0] * config.num_return_sequences
    if rows != 1:  # transformers refuses them too: one prompt's proposals cannot serve rows that disagree
        raise InputError(f"generate: assisted decoding takes one prompt and one returned sequence, found "
                         f"{input_ids.shape[0]} prompt(s) × num_return_sequences={config.num_return_sequences}")
    prompt_length = input_ids.shape[1]
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_length
    draft_tokens = config.num_assistant_tokens
    total = prompt_length + max_new
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    run = decoding._Buffers(input_ids.to(model.device), attention_mask.to(model.device), total, pad_id)
    padded = not bool(attention_mask.all())
    target, draft = _Runner(model, run, total, config, padded), _Runner(assistant, run, total, config, padded)
    eos = set(config.eos_token_ids)
    scores, raw_logits = [], []
    if streamer is not None:
        streamer.put(input_ids.cpu())
    length, done = prompt_length, False
    choose = _Verifier(config.do_sample, generator)
    while not done:
        proposals, draft_scores = _propose(draft, processors, length, min(draft_tokens, total - length - 1), choose)
        logits = target.logits(length + proposals, proposals + 1)[0]
        accepted = 0
        for i in range(proposals + 1):
            step_scores = processors(run.tokens[:, :length], logits[i][None])
            proposed = int(run.tokens[0, length]) if i < proposals else None
            token = choose.verify(step_scores[0], proposed, draft_scores[i] if proposed is not None else None)
            agrees = proposed == token
            run.tokens[0, length] = token
            length += 1
            if config.output_scores:
                scores.append(step_scores)
            if config.output_logits:
                raw_logits.append(logits[i][None])
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            done = token in eos or length == total or bool(stopping and stopping(run.tokens[:, :length], step_scores)[0])
            if done or not agrees:
                break
            accepted += 1
        target.forget_after(length - 1)
        draft.forget_after(length - 1)
        if config.num_assistant_tokens_schedule == "heuristic":
            draft_tokens = draft_tokens + 2 if accepted == proposals else max(1, draft_tokens - 1)
    if streamer is not None:
        streamer.end()
    sequences = run.tokens[:, :length]
    if not config.return_dict_in_generate:
        return sequences
    return decoding.GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(scores) if config.output_scores else None,
        logits=tuple(raw_logits) if config.output_logits else None,
        past_key_values=target.cache,
    )


class _Verifier:
    """Draws the draft's proposals and decides the target's tokens: greedy, or speculative sampling."""

    def __init__(self, sample: bool, generator: torch.Generator | None) -> None:
        self.sample, self.generator = sample, generator

    def draw(self, scores: torch.Tensor) -> torch.LongTensor:
        """Tokens `(batch,)` for processed `scores (batch, vocab)`: drawn, or the largest."""
        if self.sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator).squeeze(1)
        return scores.argmax(dim=-1)

    def verify(self, scores: torch.Tensor, proposed: int | None, draft_scores: torch.Tensor | None) -> int:
        """The target's token at a position, from its processed `scores (vocab,)`; `proposed` is the
        draft's token there (None after the last proposal) drawn from `draft_scores (vocab,)`."""
        if not self.sample:
            return int(scores.argmax())
        target = torch.softmax(scores, dim=-1)
        if proposed is None:
            return int(torch.multinomial(target, 1, generator=self.generator))
        draft = torch.softmax(draft_scores, dim=-1)
        # accept with probability p/q: a token the target rules out (p = 0) never passes
        threshold = torch.rand((), device=scores.device, generator=self.generator)
        if bool(threshold * draft[proposed] < target[proposed]):
            return proposed
        # rejected, so p < q there: the residual is positive somewhere and zero at `proposed`
        residual = (target - draft).clamp(min=0)
        return int(torch.multinomial(residual / residual.sum(), 1, generator=self.generator))


def _propose(draft: _Runner, processors: LogitsProcessorList, length: int, count: int,
             choose: _Verifier) -> tuple[int, list[torch.Tensor]]:
    """Write up to `count` of the draft's tokens after position `length`; returns how many and the
    processed scores `(vocab,)` each was chosen from."""
    run = draft.run
    chosen_from = []
    for i in range(count):
        scores = processors(run.tokens[:, :length + i], draft.next_logits(length + i))
        run.tokens[:, length + i] = choose.draw(scores)
        chosen_from.append(scores[0])
    return max(count, 0), chosen_from

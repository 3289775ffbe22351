"""Beam search (`num_beams > 1`), with transformers' scoring, so the same prompts give the same
sequences and `sequences_scores`.

Each prompt keeps `num_beams` running beams and up to `num_beams` finished hypotheses. A step scores
every continuation of every running beam (beam score + the token's processed log-probability),
keeps the best `2 × num_beams` candidates (more with several end tokens, so that enough of them
can go on), moves those that end (an end token, the length limit, a stopping criterion) among the
best `num_beams` into the finished set with the score divided by `generated length ** length_penalty`,
and continues the best `num_beams` others. `early_stopping`: True stops a prompt once it has
`num_beams` finished hypotheses; False stops it once no running beam can beat the worst finished one
at the current length; "never" only at the length limit (or, with a positive length penalty, when no
running beam could beat it even at the full length).

Beams run through the model's `forward` over a dynamic cache that is reordered every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsupportedError
from ..outputs import ModelOutput
from .config import GenerationConfig
from .processors import LogitsProcessorList
from .stopping import EosTokenCriteria, StoppingCriteriaList

# what transformers adds to a score to rule a candidate out (a finite value: sums of it stay ordered)
EXCLUDED = -1.0e9


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """`sequences (batch * num_return_sequences, length)`; `sequences_scores` (with `output_scores`):
    each returned hypothesis's length-penalised score; `scores` / `logits`: one
    `(batch * num_beams, vocab)` tensor per step (processed log-probabilities / raw logits);
    `beam_indices (batch * num_return_sequences, generated)`: the flat beam each token came from."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.LongTensor | None = None
    attentions: Any = None
    hidden_states: Any = None
    past_key_values: Any = None


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tensor (batch, beams, …)` at `index (batch, chosen)` along the beam dimension."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


@dataclass
class _Beams:
    """Running and finished beams of every prompt: tokens `(batch, beams, max_length)`, scores
    `(batch, beams)`, beam indices `(batch, beams, max_new)`."""

    running: torch.Tensor
    running_scores: torch.Tensor
    running_origins: torch.Tensor
    finished: torch.Tensor
    finished_scores: torch.Tensor
    finished_origins: torch.Tensor
    is_finished: torch.Tensor
    improvable: torch.Tensor  # (batch, 1): a running beam may still beat a finished one

    @classmethod
    def start(cls, input_ids: torch.Tensor, num_beams: int, max_length: int, fill: int) -> _Beams:
        rows, prompt_length = input_ids.shape
        batch = rows // num_beams
        device = input_ids.device
        running = torch.full((batch, num_beams, max_length), fill, dtype=torch.long, device=device)
        running[:, :, :prompt_length] = input_ids.view(batch, num_beams, prompt_length)
        scores = torch.zeros(batch, num_beams, device=device)
        scores[:, 1:] = EXCLUDED  # the beams start equal: only the first one's continuations count
        origins = torch.full((batch, num_beams, max_length - prompt_length), -1, dtype=torch.long, device=device)
        return cls(running, scores, origins, running.clone(), torch.full_like(scores, EXCLUDED), origins.clone(),
                   torch.zeros(batch, num_beams, dtype=torch.bool, device=device),
                   torch.ones(batch, 1, dtype=torch.bool, device=device))


def beam_search(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    processors: LogitsProcessorList,
    stopping: StoppingCriteriaList,
    buffers: Any,
    generator: torch.Generator | None = None,
) -> torch.LongTensor | GenerateBeamDecoderOnlyOutput:
    """Beam search over `input_ids (batch, prompt)` (left-padded, with `attention_mask`); the
    processors and criteria are built for `batch * num_beams` rows; `buffers` makes the run's
    mask and position ids for them (`decoding._Buffers`); `generator` draws beam samples."""
    if not config.use_cache:
        raise UnsupportedError("generate: beam search runs with the model's cache (use_cache=True)")
    num_beams = config.num_beams
    batch, prompt_length = input_ids.shape
    rows = batch * num_beams
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_length
    max_length = prompt_length + max_new
    eos_ids = config.eos_token_ids
    # what pads shorter hypotheses (transformers' choice: the pad id unless it is 0, only with end tokens)
    fill = (config.pad_token_id or eos_ids[0]) if eos_ids else -1
    expanded_ids = input_ids.repeat_interleave(num_beams, dim=0)
    run = buffers(expanded_ids, attention_mask.repeat_interleave(num_beams, dim=0), max_length, max(fill, 0))
    ending = StoppingCriteriaList(stopping)
    if eos_ids:
        ending.append(EosTokenCriteria(eos_ids))
    candidates = max(2, 1 + len(eos_ids)) * num_beams
    top_candidates = torch.arange(candidates, device=input_ids.device) < num_beams
    beams = _Beams.start(expanded_ids, num_beams, max_length, fill)
    cache = model.make_generation_cache(rows, None)
    scores, raw_logits = [], []
    length = prompt_length
    while True:
        start = 0 if length == prompt_length else length - 1
        outputs = model(**model.prepare_inputs_for_generation(
            beams.running.view(rows, max_length)[:, start:length], run.mask[:, :length],
            run.positions[:, start:length], cache, run.slots[start:length],
        ))
        cache = outputs.past_key_values
        logits = outputs.logits[:, -1, :].float()
        log_probs = processors(beams.running.view(rows, max_length)[:, :length], torch.log_softmax(logits, dim=-1))
        if config.output_logits:
            raw_logits.append(logits.clone())
        if config.output_scores:
            scores.append(log_probs.clone())
        hits = _step(beams, log_probs, length, prompt_length, max_length, config, ending, candidates, top_candidates,
                     generator)
        origins = beams.running_origins[:, :, length - prompt_length].reshape(rows)
        cache.reorder_cache(origins)
        length += 1
        _update_improvable(beams, length, prompt_length, max_length, config)
        still_open = not (bool(beams.is_finished.all()) and config.early_stopping is True)
        if not (bool(beams.improvable.any()) and still_open and not bool(hits.all())):
            break
    return _result(beams, prompt_length, config, scores, raw_logits, cache)


def _step(beams: _Beams, log_probs: torch.Tensor, length: int, prompt_length: int, max_length: int,
          config: GenerationConfig, ending: StoppingCriteriaList, candidates: int,
          top_candidates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Extend every prompt's beams by one token; returns which candidates ended `(batch, candidates)`."""
    batch, num_beams = beams.running_scores.shape
    vocab = log_probs.shape[-1]
    totals = (log_probs.view(batch, num_beams, vocab) + beams.running_scores[:, :, None]).view(batch, -1)
    if config.do_sample:
        chosen = torch.multinomial(torch.softmax(totals, dim=-1), candidates, generator=generator)
        chosen_scores, order = totals.gather(1, chosen).sort(dim=-1, descending=True)
        chosen = chosen.gather(1, order)
    else:
        chosen_scores, chosen = torch.topk(totals, candidates)
    source = chosen // vocab  # (batch, candidates): the beam each candidate continues
    sequences = _take(beams.running, source)
    sequences[:, :, length] = chosen % vocab
    origins = _take(beams.running_origins, source)
    origins[:, :, length - prompt_length] = source + torch.arange(batch, device=source.device)[:, None] * num_beams
    grown = sequences[:, :, :length + 1].reshape(batch * candidates, length + 1)
    hits = ending(grown, None).view(batch, candidates) | (length + 1 >= max_length)

    # the best candidates that did not end run on
    open_scores = chosen_scores + hits.float() * EXCLUDED
    keep = torch.topk(open_scores, num_beams).indices
    beams.running, beams.running_scores, beams.running_origins = (
        _take(sequences, keep), _take(open_scores, keep), _take(origins, keep))

    # those among the best num_beams that ended join the finished hypotheses if they beat them
    ended = hits & top_candidates[None]
    final = chosen_scores / ((length + 1 - prompt_length) ** config.length_penalty)
    full = beams.is_finished.all(dim=-1, keepdim=True) & (config.early_stopping is True)
    final += full.float() * EXCLUDED
    final += (~beams.improvable).float() * EXCLUDED
    final += (~ended) * EXCLUDED
    merged_scores = torch.cat((beams.finished_scores, final), dim=1)
    best = torch.topk(merged_scores, num_beams).indices
    beams.finished = _take(torch.cat((beams.finished, sequences), dim=1), best)
    beams.finished_scores = _take(merged_scores, best)
    beams.finished_origins = _take(torch.cat((beams.finished_origins, origins), dim=1), best)
    beams.is_finished = _take(torch.cat((beams.is_finished, ended), dim=1), best)
    return hits


def _update_improvable(beams: _Beams, length: int, prompt_length: int, max_length: int, config: GenerationConfig) -> None:
    """Whether the best running beam could still beat the worst finished hypothesis: at the current
    length, or with `early_stopping="never"` and a positive length penalty, at the longest."""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        best_length = max_length - prompt_length
    else:
        best_length = length - prompt_length
    best_running = beams.running_scores[:, :1] / (best_length ** config.length_penalty)
    worst_finished = torch.where(beams.is_finished, beams.finished_scores.min(dim=1, keepdim=True).values, -1.0e9)
    beams.improvable &= (best_running > worst_finished).any(dim=-1, keepdim=True)


def _result(beams: _Beams, prompt_length: int, config: GenerationConfig, scores: list[torch.Tensor],
            raw_logits: list[torch.Tensor], cache: Any) -> torch.LongTensor | GenerateBeamDecoderOnlyOutput:
    """The best `num_return_sequences` hypotheses of each prompt, cut to the longest one's length."""
    returned = config.num_return_sequences
    batch = beams.finished.shape[0]
    sequences = beams.finished[:, :returned].reshape(batch * returned, -1)
    origins = beams.finished_origins[:, :returned].reshape(batch * returned, -1)
    generated = int((origins >= 0).sum(dim=1).max())
    sequences = sequences[:, :prompt_length + generated]
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=beams.finished_scores[:, :returned].reshape(-1) if config.output_scores else None,
        scores=tuple(scores) if config.output_scores else None,
        logits=tuple(raw_logits) if config.output_logits else None,
        beam_indices=origins[:, :generated],
        past_key_values=cache,
    )

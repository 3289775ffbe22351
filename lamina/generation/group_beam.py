"""Diverse (group) beam search: `num_beam_groups > 1`, with `diversity_penalty`, as transformers 4.x
ran it in core (transformers 5 moved it to a Hub recipe), so the same prompts give the same sequences.

The `num_beams` beams of a prompt are split into `num_beam_groups` groups of `group_size`. Each step
runs the model once over every beam, then the groups choose their next tokens one after another:
group g's log-probabilities lose `diversity_penalty × n` for a token that the earlier groups chose
`n` times at this step (a Hamming penalty), pass through the processors, and the group keeps its
best `group_size` continuations as an ordinary beam search would. A candidate ending in an end token
among the group's best `group_size` becomes a finished hypothesis of its group (score over
`generated length ** length_penalty`, the end token itself not counted among its tokens); a group is
done once it holds `group_size` hypotheses that no running beam can beat (`early_stopping`). At the
end every group's running beams join its hypotheses and the prompt returns the best of all groups.

```
step t:  model(all beams) ─┬─ group 0: log-probs ─────────────── processors → top group_size
                           ├─ group 1: log-probs − penalty × counts(group 0's tokens) → …
                           └─ group 2: log-probs − penalty × counts(groups 0-1's tokens) → …
```

`beam_indices` are not returned (transformers' own indices are group-local and do not name the flat
beams once a batch holds several prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .beam import EXCLUDED, GenerateBeamDecoderOnlyOutput
from .config import GenerationConfig
from .processors import LogitsProcessorList
from .stopping import StoppingCriteriaList


@dataclass
class _Hypotheses:
    """One group's finished hypotheses of one prompt: at most `size` `(score, tokens)`, the best kept."""

    size: int
    config: GenerationConfig
    max_length: int
    beams: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    worst: float = 1.0e9
    done: bool = False

    def add(self, tokens: torch.Tensor, sum_log_probs: float, generated: int) -> None:
        score = sum_log_probs / (generated ** self.config.length_penalty)
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def cannot_improve(self, best_sum_log_probs: float, length: int, prompt_length: int) -> bool:
        """Whether no running beam whose sum is `best_sum_log_probs` at `length` tokens can enter."""
        if len(self.beams) < self.size:
            return False
        early, penalty = self.config.early_stopping, self.config.length_penalty
        if early is True:
            return True
        reach = self.max_length if early == "never" and penalty > 0.0 else length
        return self.worst >= best_sum_log_probs / (reach - prompt_length) ** penalty


def _group_rows(batch: int, num_beams: int, start: int, size: int, device: torch.device) -> torch.Tensor:
    """The flat rows `(batch * size,)` of beams `start:start + size` of every prompt."""
    return (torch.arange(batch, device=device)[:, None] * num_beams + start + torch.arange(size, device=device)).view(-1)


def _diversity_penalty(log_probs: torch.Tensor, chosen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`log_probs (batch * size, vocab)` minus `penalty` × how often each prompt's earlier groups chose
    each token; `chosen (batch, earlier)`: those groups' tokens at this step."""
    batch, vocab = chosen.shape[0], log_probs.shape[-1]
    counts = torch.zeros(batch, vocab, device=log_probs.device).scatter_add_(
        1, chosen, torch.ones_like(chosen, dtype=torch.float))
    return (log_probs.view(batch, -1, vocab) - penalty * counts[:, None]).view_as(log_probs)


def _choose(hypotheses: list[_Hypotheses], sequences: torch.Tensor, totals: torch.Tensor, size: int,
            eos_ids: list[int], pad: int, length: int, prompt_length: int) -> tuple[torch.Tensor, ...]:
    """One group's step: `totals (batch, size * vocab)` sums of its beams' continuations, `sequences
    (batch * size, length)` its beams. Returns the next scores, tokens and source rows `(batch, size)`."""
    batch, vocab = totals.shape[0], totals.shape[1] // size
    top_scores, top = torch.topk(totals, max(2, 1 + len(eos_ids)) * size, dim=1)
    scores = torch.zeros(batch, size, device=totals.device)
    tokens = torch.full((batch, size), pad, dtype=torch.long, device=totals.device)
    sources = torch.zeros(batch, size, dtype=torch.long, device=totals.device)
    for prompt, found in enumerate(hypotheses):
        if found.done:
            continue  # a done group pads; its rows are never read again
        kept = 0
        for rank, (score, flat) in enumerate(zip(top_scores[prompt].tolist(), top[prompt].tolist())):
            source = prompt * size + flat // vocab
            if flat % vocab in eos_ids:
                if rank < size:
                    found.add(sequences[source].clone(), score, length + 1 - prompt_length)
                continue
            scores[prompt, kept], tokens[prompt, kept], sources[prompt, kept] = score, flat % vocab, source
            kept += 1
            if kept == size:
                break
        found.done = found.cannot_improve(top_scores[prompt, 0].item(), length + 1, prompt_length)
    return scores, tokens, sources


def group_beam_search(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    processors: LogitsProcessorList,
    stopping: StoppingCriteriaList,
    buffers: Any,
) -> torch.LongTensor | GenerateBeamDecoderOnlyOutput:
    """Diverse beam search over `input_ids (batch, prompt)` (left-padded, with `attention_mask`);
    `processors` are built for `batch * group_size` rows (one group at a time); `buffers` makes the
    run's mask and position ids (`decoding._Buffers`)."""
    num_beams, groups = config.num_beams, config.num_beam_groups
    size = num_beams // groups
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_length
    max_length = prompt_length + max_new
    eos_ids = config.eos_token_ids
    pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    sequences = input_ids.repeat_interleave(num_beams, dim=0)
    run = buffers(sequences, attention_mask.repeat_interleave(num_beams, dim=0), max_length, pad)
    hypotheses = [[_Hypotheses(size, config, max_length) for _ in range(batch)] for _ in range(groups)]
    beam_scores = torch.full((batch, num_beams), EXCLUDED, device=device)
    beam_scores[:, ::size] = 0.0  # each group starts from one beam, so its beams do not repeat each other
    beam_scores = beam_scores.view(-1)
    members = [_group_rows(batch, num_beams, g * size, size, device) for g in range(groups)]
    cache = model.make_generation_cache(batch * num_beams, None)
    scores, raw_logits = [], []
    length = prompt_length
    while True:
        start = 0 if length == prompt_length else length - 1
        outputs = model(**model.prepare_inputs_for_generation(
            sequences[:, start:length], run.mask[:, :length], run.positions[:, start:length], cache,
            run.slots[start:length],
        ))
        cache = outputs.past_key_values
        logits = outputs.logits[:, -1, :].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = torch.zeros(batch * num_beams, dtype=torch.long, device=device)
        reorder = torch.zeros_like(chosen)
        processed = torch.zeros_like(log_probs)
        for g, rows in enumerate(members):
            group_scores = log_probs[rows]
            if config.diversity_penalty > 0.0 and g > 0:
                group_scores = _diversity_penalty(group_scores, chosen.view(batch, num_beams)[:, :g * size],
                                                  config.diversity_penalty)
            group_scores = processors(sequences[rows], group_scores)
            processed[rows] = group_scores
            totals = (group_scores + beam_scores[rows, None]).view(batch, -1)
            next_scores, next_tokens, sources = _choose(
                hypotheses[g], sequences[rows], totals, size, eos_ids, pad, length, prompt_length)
            beam_scores[rows] = next_scores.view(-1)
            sources = sources.view(-1)
            sequences[rows] = sequences[rows][sources]
            chosen[rows] = next_tokens.view(-1)
            reorder[rows] = num_beams * (sources // size) + g * size + sources % size
        if config.output_scores:
            scores.append(processed)
        if config.output_logits:
            raw_logits.append(logits.clone())
        sequences = torch.cat((sequences, chosen[:, None]), dim=1)
        cache.reorder_cache(reorder)
        length += 1
        all_done = all(found.done for group in hypotheses for found in group)
        if all_done or length >= max_length or bool(stopping(sequences, None).all()):
            break
    return _finish(hypotheses, sequences, beam_scores, config, prompt_length, max_length, pad, eos_ids,
                   scores, raw_logits, cache)


def _finish(hypotheses: list[list[_Hypotheses]], sequences: torch.Tensor, beam_scores: torch.Tensor,
            config: GenerationConfig, prompt_length: int, max_length: int, pad: int, eos_ids: list[int],
            scores: list[torch.Tensor], raw_logits: list[torch.Tensor], cache: Any) -> Any:
    """Every group's running beams join its hypotheses; each prompt returns its best
    `num_return_sequences` over all groups, padded (an end token after each shorter one)."""
    groups, batch, size = len(hypotheses), len(hypotheses[0]), hypotheses[0][0].size
    best: list[tuple[float, torch.Tensor]] = []
    for prompt in range(batch):
        for g in range(groups):
            found = hypotheses[g][prompt]
            if found.done:
                continue
            for row in range(prompt * groups * size + g * size, prompt * groups * size + (g + 1) * size):
                found.add(sequences[row], beam_scores[row].item(), sequences.shape[1] - prompt_length)
        # ties go to the hypothesis added last, as popping transformers' stably sorted list does
        ranked = sorted((hyp for g in range(groups) for hyp in hypotheses[g][prompt].beams), key=lambda hyp: hyp[0])
        best.extend(ranked[::-1][:config.num_return_sequences])
    lengths = [len(tokens) for _, tokens in best]
    width = min(max(lengths) + 1, max_length)
    out = torch.full((len(best), width), pad, dtype=torch.long, device=sequences.device)
    for row, (_, tokens) in enumerate(best):
        out[row, :len(tokens)] = tokens
        if len(tokens) < width and eos_ids:  # (without end tokens every hypothesis runs to the same length)
            out[row, len(tokens)] = eos_ids[0]
    if not config.return_dict_in_generate:
        return out
    return GenerateBeamDecoderOnlyOutput(
        sequences=out,
        sequences_scores=torch.tensor([score for score, _ in best], device=out.device) if config.output_scores else None,
        scores=tuple(scores) if config.output_scores else None,
        logits=tuple(raw_logits) if config.output_logits else None,
        past_key_values=cache,
    )

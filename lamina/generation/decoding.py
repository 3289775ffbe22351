"""`GenerationMixin.generate`: greedy and sampled decoding for every causal LM.

The loop reads as buffers → prefill → step → stop. The token buffer `(batch, prompt + new)`, the
attention mask and the position ids of the whole run are built once (`_Buffers`) and each step reads
views of them; the prompt runs through the model's `forward`; every later token through the step that
`decode_steps(model).prepare` chose (`step.py`: eager, compiled or native, and what it keeps between
calls); finished rows are tracked on the device (`_Ends`), and the loop asks the device whether every
row is done only every few steps, then trims the extra columns, so the output is what a per-step check
would give.

A model takes part by having `forward(input_ids, attention_mask, past_key_values, use_cache, …)`
return `.logits (batch, seq, vocab)` and `.past_key_values`; `prepare_inputs_for_generation` and
`make_generation_cache` are the hooks a model with another interface overrides. A model that also
offers `decode_step(input_ids, position_ids, cache_position, attention_mask, cache) → logits
(batch, vocab)` (the decoders; the contract is `step.Step`) runs every token after the prompt through
it; without one, its `forward` runs every step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..outputs import ModelOutput
from .config import GenerationConfig
from .processors import LogitsProcessorList, build_processors
from .step import Step, decode_steps
from .search import dispatch_search
from .stopping import build_stopping_criteria


def stop_check_interval(device: torch.device, streaming: bool) -> int:
    """Steps between "is every row finished?" checks. Each check waits for the device; on the CPU
    it costs nothing, and a streamer copies every token to the host anyway."""
    return 1 if device.type == "cpu" or streaming else 8


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """`sequences (batch * num_return_sequences, length)`; `scores` / `logits`: one
    `(batch, vocab)` tensor per generated token (processed / raw), when asked for."""

    sequences: torch.LongTensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    attentions: Any = None
    hidden_states: Any = None
    past_key_values: Any = None


class GenerationMixin:
    """Adds `generate` to a causal LM (see the module docstring for what the model must offer)."""

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        position_ids: torch.LongTensor,
        past_key_values: Any,
        cache_position: torch.LongTensor,
    ) -> dict[str, Any]:
        """Keyword arguments of one forward call: `input_ids (batch, new)` are the tokens not yet
        in the cache, `attention_mask (batch, ≥ cache_position[-1] + 1)` covers every position,
        `position_ids (batch, new)` skip left padding, `cache_position (new,)` are absolute slots."""
        return dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, cache_position=cache_position,
            use_cache=past_key_values is not None, logits_to_keep=1, return_dict=True,
        )

    def make_generation_cache(self, batch_size: int, max_length: int | None) -> Any:
        """A cache whose full-attention layers are preallocated to `max_length` tokens (static), or
        grow when it is None (dynamic); sliding layers always get a rolling buffer."""
        make = getattr(self.base_model, "make_cache", None)
        if make is None:
            return None
        return make("static", max_length) if max_length is not None else make("dynamic")

    def _generation_settings(self, generation_config: GenerationConfig | None, kwargs: dict[str, Any]) -> GenerationConfig:
        base = generation_config or getattr(self, "generation_config", None)
        config = (base or GenerationConfig.from_model_config(self.config)).copy()
        # token ids the generation config leaves unset come from the model config; an explicit
        # argument (None included) overrides both
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(config, name) is None:
                setattr(config, name, getattr(self.config, name, None))
        unused = config.update(**kwargs)
        if unused:
            raise InputError(f"generate: unknown argument(s) {sorted(unused)}")
        return config

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        streamer: Any = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | GenerateDecoderOnlyOutput:
        """Continue `input_ids (batch, prompt)` (left-padded, with `attention_mask`) by up to
        `max_new_tokens` tokens; returns `(batch * num_return_sequences, prompt + generated)`,
        or a `GenerateDecoderOnlyOutput` with `return_dict_in_generate=True`.

        Accepts the fields of `GenerationConfig` as keyword arguments (they override
        `generation_config`, then the model's `generation_config.json`), a tokenizer's output
        unpacked, a `streamer` (`put(tokens)` / `end()`) and a `generator` for reproducible sampling.
        """
        input_ids = kwargs.pop("input_ids", inputs)
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("token_type_ids", None)
        # transformers' arguments for stop strings, the caller's criteria and assisted decoding
        tokenizer = kwargs.pop("tokenizer", None)
        stopping_criteria = kwargs.pop("stopping_criteria", None)
        assistant_model = kwargs.pop("assistant_model", None)
        if input_ids is None:
            raise InputError("generate: pass input_ids (batch, prompt length)")
        config = self._generation_settings(generation_config, kwargs)
        input_ids, attention_mask, pad_id = self._generation_inputs(input_ids, attention_mask, config)
        stopping = build_stopping_criteria(config, tokenizer, stopping_criteria)
        # beam search and assisted decoding run their own loops (`generation/search.py`)
        searched = dispatch_search(self, input_ids, attention_mask, config, logits_processor, stopping,
                                   assistant_model, streamer, generator)
        if searched is not None:
            return searched
        if config.num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        batch, prompt_length = input_ids.shape
        max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_length
        if max_new <= 0:
            raise InputError(
                f"generate: the prompt has {prompt_length} tokens and max_length is {config.max_length}; "
                "set max_new_tokens to generate"
            )
        total = prompt_length + max_new

        # buffers
        prepared = decode_steps(self).prepare(config, batch, total, max_new)
        run = _Buffers(input_ids, attention_mask, prepared.capacity, pad_id)
        processors = build_processors(config, attention_mask, logits_processor)
        ends = _Ends(config.eos_token_ids, batch, total, stop_check_interval(self.device, streamer is not None),
                     self.device)
        scores, raw_logits = [], []
        if streamer is not None:
            streamer.put(input_ids.cpu())
        # the decode step needs the mask only to hide left padding
        step_mask = run.mask if not bool(attention_mask.all()) else None

        # split over ranks (lamina.distributed), plain greedy picks need only each rank's share of the logits
        plan = getattr(self, "parallel_plan", None)
        shares = plan is not None and not (config.do_sample or processors or stopping or config.output_scores
                                           or config.output_logits)
        with plan.vocabulary_shards(self) if shares else contextlib.nullcontext() as pick_over_ranks:
            # prefill, then a step a token until every row has ended
            logits, cache = self._forward_logits(run, 0, prompt_length, prepared.cache)
            length = prompt_length
            for step in range(max_new):
                if step > 0:
                    logits, cache = self._step_logits(prepared.step, run, next_tokens, length, cache, step_mask)
                step_scores = processors(run.tokens[:, :length], logits)
                chosen = pick_over_ranks(logits) if pick_over_ranks else _choose(config, step_scores, generator)
                next_tokens = torch.where(ends.unfinished, chosen, pad_id)
                run.tokens[:, length] = next_tokens
                length += 1
                # copies: a CUDA-graph step hands back the same output buffer every step
                if config.output_scores:
                    scores.append(step_scores.clone())
                if config.output_logits:
                    raw_logits.append(logits.clone())
                if streamer is not None:
                    streamer.put(next_tokens.cpu())
                # stop strings, max_time, the caller's criteria: read on the host every step
                if stopping and ends.halt(stopping(run.tokens[:, :length], step_scores), length):
                    break
                if ends.record(next_tokens, length, step):
                    break

        length = ends.trimmed(length)
        if streamer is not None:
            streamer.end()
        sequences = run.tokens[:, :length]
        if not config.return_dict_in_generate:
            return sequences
        kept = length - prompt_length
        return GenerateDecoderOnlyOutput(
            sequences=sequences,
            scores=tuple(scores[:kept]) if config.output_scores else None,
            logits=tuple(raw_logits[:kept]) if config.output_logits else None,
            past_key_values=cache,
        )

    def _generation_inputs(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                           config: GenerationConfig) -> tuple[torch.LongTensor, torch.Tensor, int]:
        """`input_ids` and `attention_mask (batch, prompt)` on the model's
        device (the mask made from the pad token where not given), and the id that fills finished rows."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        input_ids = input_ids.to(self.device)
        eos_ids = config.eos_token_ids
        pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        if attention_mask is None:
            attention_mask = _default_attention_mask(input_ids, config.pad_token_id, eos_ids)
        attention_mask = attention_mask.to(self.device)
        if attention_mask.shape != input_ids.shape:
            raise InputError(
                f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        return input_ids, attention_mask, pad_id

    def _forward_logits(self, run: _Buffers, start: int, length: int, cache: Any) -> tuple[torch.Tensor, Any]:
        """The last position's logits `(batch, vocab)` of a `forward` over positions `[start, length)`
        (the prompt, or a step of a model without `decode_step`), and the cache it returns."""
        outputs = self(**self.prepare_inputs_for_generation(
            run.tokens[:, start:length], run.mask[:, :length], run.positions[:, start:length], cache,
            run.slots[start:length],
        ))
        return outputs.logits[:, -1, :].float(), outputs.past_key_values if cache is not None else None

    def _step_logits(self, step: Step | None, run: _Buffers, tokens: torch.LongTensor, length: int, cache: Any,
                     step_mask: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """The logits `(batch, vocab)` after `tokens (batch,)`, the newest (at `length - 1`)."""
        if step is None:
            return self._forward_logits(run, 0 if cache is None else length - 1, length, cache)
        # fresh one-token tensors each step: a compiled step sees the same inputs every time
        logits = step(tokens[:, None], run.positions[:, length - 1, None].clone(), run.slots[length - 1:length].clone(),
                      step_mask, cache).float()
        cache.advance(1)
        return logits, cache


def _choose(config: GenerationConfig, scores: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """Each row's next token from its processed `scores (batch, vocab)`: drawn, or the largest."""
    if config.do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
    # max's index is argmax's (the first of ties, NaN first), and max is the faster of the two
    return scores.max(dim=-1).indices


class _Ends:
    """Which rows have produced an end token, and the length each had then (on the device)."""

    def __init__(self, eos_ids: list[int], batch: int, total: int, check_every: int, device: torch.device) -> None:
        self.eos = torch.tensor(eos_ids, device=device, dtype=torch.long) if eos_ids else None
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        self.lengths = torch.full((batch,), total, dtype=torch.long, device=device)  # total: not ended yet
        self.halted = torch.zeros(batch, dtype=torch.bool, device=device)  # by a stopping criterion
        self.check_every = check_every

    def halt(self, halted: torch.Tensor, length: int) -> bool:
        """Note the rows a stopping criterion ends (`halted (batch,)`); whether every row has ended.
        As in transformers, a halted row is padded from here on only where there are end tokens."""
        self.halted |= halted
        if self.eos is not None:
            self.lengths.masked_fill_(self.unfinished & self.halted, length)
            self.unfinished &= ~self.halted
        return bool((self.halted | ~self.unfinished).all())

    def record(self, tokens: torch.LongTensor, length: int, step: int) -> bool:
        """Note the rows that `tokens (batch,)` end; whether every row has ended (asked only every
        `check_every` steps: each answer waits for the device)."""
        if self.eos is None:
            return False
        ended = self.unfinished & torch.isin(tokens, self.eos)
        self.lengths.masked_fill_(ended, length)
        self.unfinished &= ~ended
        return (step + 1) % self.check_every == 0 and not bool(self.unfinished.any())

    def trimmed(self, length: int) -> int:
        """The output's length: up to the last row's end, where the loop ran past it."""
        if self.eos is not None and self.check_every > 1:
            return int(torch.where(self.unfinished, length, self.lengths).max())
        return length


class _Buffers:
    """The whole run's tokens, mask, position ids and cache slots, allocated once for `capacity`
    positions (at least prompt + new tokens; a compiled step's cache may hold more).

    Position ids count only real tokens (left padding does not shift a row's positions); a padding
    slot gets position 1, as in transformers. Generated tokens are always attended, so the mask is 1
    past the prompt.
    """

    def __init__(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, capacity: int, pad_id: int) -> None:
        batch, prompt_length = input_ids.shape
        device = input_ids.device
        self.tokens = torch.full((batch, capacity), pad_id, dtype=torch.long, device=device)
        self.tokens[:, :prompt_length] = input_ids
        self.mask = torch.ones((batch, capacity), dtype=torch.long, device=device)
        self.mask[:, :prompt_length] = attention_mask
        prompt_positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        last = prompt_positions[:, -1:]
        steps = torch.arange(1, capacity - prompt_length + 1, device=device)
        self.positions = torch.cat((prompt_positions, last + steps), dim=1)
        self.slots = torch.arange(capacity, device=device)


def _default_attention_mask(input_ids: torch.LongTensor, pad_id: int | None, eos_ids: list[int]) -> torch.Tensor:
    """Mask out pad tokens when the pad token is distinct from the end tokens (as transformers)."""
    if pad_id is not None and pad_id not in eos_ids:
        return (input_ids != pad_id).long()
    return torch.ones_like(input_ids)

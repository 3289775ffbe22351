"""`GenerationMixin.generate`: greedy and sampled decoding for every causal LM.

The loop works on preallocated buffers: the token buffer `(batch, prompt + new)`, the attention
mask and the position ids of the whole run are built once, and each step reads views of them.
The model keeps its keys and values in a static cache (full-attention layers) or rolling buffers
(sliding layers), both written in place. Finished rows are tracked on the device; the loop asks
the device whether every row is done only every few steps, then trims the extra columns, so the
output is what a per-step check would give.

A model takes part by having `forward(input_ids, attention_mask, past_key_values, use_cache, …)`
return `.logits (batch, seq, vocab)` and `.past_key_values`; `prepare_inputs_for_generation` and
`make_generation_cache` are the hooks a model with another interface overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError, UnsupportedError
from ..outputs import ModelOutput
from .config import GenerationConfig
from .processors import LogitsProcessorList, build_processors



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
        if input_ids is None:
            raise InputError("generate: pass input_ids (batch, prompt length)")
        config = self._generation_settings(generation_config, kwargs)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        device = self.device
        input_ids = input_ids.to(device)
        eos_ids = config.eos_token_ids
        pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        if attention_mask is None:
            attention_mask = _default_attention_mask(input_ids, config.pad_token_id, eos_ids)
        attention_mask = attention_mask.to(device)
        if attention_mask.shape != input_ids.shape:
            raise InputError(
                f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}"
            )
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
        run = _Buffers(input_ids, attention_mask, total, pad_id)
        cache = None
        if config.use_cache:
            cache = self.make_generation_cache(batch, total if _cache_kind(config) == "static" else None)
        processors = build_processors(config, attention_mask)
        processors.extend(logits_processor or [])
        eos_tensor = torch.tensor(eos_ids, device=device, dtype=torch.long) if eos_ids else None
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        # the length each row had when it produced its end token (total: not yet)
        lengths = torch.full((batch,), total, dtype=torch.long, device=device)
        check_every = stop_check_interval(device, streamer is not None)
        scores, raw_logits = [], []
        if streamer is not None:
            streamer.put(input_ids.cpu())

        length = prompt_length
        for step in range(max_new):
            start = 0 if cache is None or step == 0 else length - 1
            outputs = self(**self.prepare_inputs_for_generation(
                run.tokens[:, start:length], run.mask[:, :length], run.positions[:, start:length],
                cache, run.slots[start:length],
            ))
            cache = outputs.past_key_values if cache is not None else None
            logits = outputs.logits[:, -1, :].float()
            step_scores = processors(run.tokens[:, :length], logits)
            if config.do_sample:
                probs = torch.softmax(step_scores, dim=-1)
                next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                next_tokens = step_scores.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, pad_id)
            run.tokens[:, length] = next_tokens
            length += 1
            if config.output_scores:
                scores.append(step_scores)
            if config.output_logits:
                raw_logits.append(logits)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if eos_tensor is not None:
                ended = unfinished & torch.isin(next_tokens, eos_tensor)
                lengths.masked_fill_(ended, length)
                unfinished &= ~ended
                if (step + 1) % check_every == 0 and not bool(unfinished.any()):
                    break

        if eos_tensor is not None and check_every > 1:
            length = int(torch.where(unfinished, length, lengths).max())
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


class _Buffers:
    """The whole run's tokens, mask, position ids and cache slots, allocated once.

    Position ids count only real tokens (left padding does not shift a row's positions); a padding
    slot gets position 1, as in transformers. Generated tokens are always attended, so the mask is 1
    past the prompt.
    """

    def __init__(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, total: int, pad_id: int) -> None:
        batch, prompt_length = input_ids.shape
        device = input_ids.device
        self.tokens = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        self.tokens[:, :prompt_length] = input_ids
        self.mask = torch.ones((batch, total), dtype=torch.long, device=device)
        self.mask[:, :prompt_length] = attention_mask
        prompt_positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        last = prompt_positions[:, -1:]
        steps = torch.arange(1, total - prompt_length + 1, device=device)
        self.positions = torch.cat((prompt_positions, last + steps), dim=1)
        self.slots = torch.arange(total, device=device)


# transformers' cache_implementation values → lamina's cache kinds (rolling buffers are automatic)
_CACHE_KINDS = {None: "static", "static": "static", "hybrid": "static", "sliding_window": "static", "dynamic": "dynamic"}


def _cache_kind(config: GenerationConfig) -> str:
    if config.cache_implementation not in _CACHE_KINDS:
        raise UnsupportedError(
            f"generate: cache_implementation {config.cache_implementation!r} is not supported "
            f"(expected one of {sorted(k for k in _CACHE_KINDS if k)})"
        )
    return _CACHE_KINDS[config.cache_implementation]


def _default_attention_mask(input_ids: torch.LongTensor, pad_id: int | None, eos_ids: list[int]) -> torch.Tensor:
    """Mask out pad tokens when the pad token is distinct from the end tokens (as transformers)."""
    if pad_id is not None and pad_id not in eos_ids:
        return (input_ids != pad_id).long()
    return torch.ones_like(input_ids)

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

A model that also offers `decode_step(input_ids, position_ids, cache_position, attention_mask,
cache) → logits (batch, vocab)` (the decoders) runs every step after the prompt through it: it has
the same shapes at every step, so `torch.compile` captures it once (inductor on the CPU, CUDA graphs
on a GPU). The compiled step is used when `compile_config` asks for it, or, unless
`disable_compile`, once the model has been asked for `AUTO_COMPILE_TOKENS` tokens in this process:
compiling costs seconds to a minute (SmolLM2-135M on 2 CPU cores: about 45 s, 13 s with inductor's
disk cache warm) and saves a third of each step, so it pays only over many tokens
(bench/RESULTS.md). Any failure to compile falls back to the eager step with a warning. On the
CPU, a model that lamina's native step can run (`native_step`: a float32 Llama-architecture
decoder on lamina's kernels) decodes through it instead, eager or compiled alike: it is faster than
both and has nothing to compile.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InputError, UnsupportedError
from ..outputs import ModelOutput
from ..quantization.linear import int8_fused_on_cuda, uses_lamina_kernels
from .config import GenerationConfig
from .native_step import native_step
from .processors import LogitsProcessorList, build_processors
from .search import dispatch_search
from .stopping import build_stopping_criteria


# tokens (batch × new tokens, summed over a model's generate calls) after which the step is compiled
AUTO_COMPILE_TOKENS = 1024
# a compiled step's static cache holds a multiple of this many slots, so runs of similar lengths
# share one graph
COMPILED_CAPACITY_STEP = 256


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

    def _wants_compiled_step(self, config: GenerationConfig, new_tokens: int) -> bool:
        """Compile the decode step when asked to, or once enough tokens make it pay (module docstring)."""
        if config.disable_compile or not getattr(self, "compilable_decode", False):
            return False
        if getattr(self, "_compile_failed", False):
            return False
        if config.compile_settings() is not None:
            return True
        return getattr(self, "_generated_tokens", 0) + new_tokens >= AUTO_COMPILE_TOKENS

    def _generation_cache(self, batch_size: int, capacity: int, reuse: bool) -> Any:
        """A static cache of `capacity` slots. A compiled step keeps one per batch size and capacity
        across calls (emptied, not reallocated): CUDA graphs replay on fixed addresses. The cache a
        run returns is then the one the next run of that shape reuses, as in transformers (and of
        the model's dtype and device: a model moved or cast since gets a new one)."""
        if not reuse:
            return self.make_generation_cache(batch_size, capacity)
        kept = self.__dict__.setdefault("_kept_caches", {})
        key = (batch_size, capacity, self.dtype, self.device)
        if key not in kept:
            kept[key] = self.make_generation_cache(batch_size, capacity)
        cache = kept[key]
        if cache is not None:
            cache.reset()
        return cache

    def _decode_step(self, config: GenerationConfig, compiled: bool) -> Callable[..., torch.Tensor] | None:
        """The step after the prompt: the model's `decode_step` (compiled when `compiled`), or None
        for a model without one (its `forward` runs every step)."""
        step = getattr(self, "decode_step", None)
        on_cpu = self.device.type == "cpu"
        if step is None or not (compiled or on_cpu):
            return step
        state = module_state(self)  # what both steps below are kept against (~2 ms for SmolLM2-135M)
        if on_cpu:
            # lamina's native step (`native_step`), built again when the model changed
            kept = self.__dict__.get("_native")
            if kept is None or kept[0] != state:
                kept = self.__dict__["_native"] = (state, native_step(self))
            if kept[1] is not None:
                return kept[1]
        if not compiled:
            return step
        settings = _compile_arguments(config.compile_settings(), self.device, uses_lamina_kernels(self),
                                      int8_fused_on_cuda(self))
        key = repr(sorted(settings.items()))
        steps = self.__dict__.setdefault("_compiled_steps", {})
        if key not in steps or steps[key][0] != state:
            steps[key] = (state, _with_eager_fallback(self, torch.compile(_own_code(step), **settings), step))
        return steps[key][1]

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
        static = config.use_cache and _cache_kind(config) == "static"
        compiled = static and self._wants_compiled_step(config, batch * max_new)
        capacity = -(-total // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP if compiled else total
        run = _Buffers(input_ids, attention_mask, capacity, pad_id)
        cache = None
        if config.use_cache:
            cache = self._generation_cache(batch, capacity, reuse=compiled) if static else self.make_generation_cache(batch, None)
        decode_step = self._decode_step(config, compiled) if cache is not None else None
        self._generated_tokens = getattr(self, "_generated_tokens", 0) + batch * max_new
        processors = build_processors(config, attention_mask, logits_processor)
        eos_tensor = torch.tensor(eos_ids, device=device, dtype=torch.long) if eos_ids else None
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        halted = torch.zeros(batch, dtype=torch.bool, device=device)  # by `stopping`
        # the length each row had when it produced its end token (total: not yet)
        lengths = torch.full((batch,), total, dtype=torch.long, device=device)
        check_every = stop_check_interval(device, streamer is not None)
        scores, raw_logits = [], []
        if streamer is not None:
            streamer.put(input_ids.cpu())

        # the decode step needs the mask only to hide left padding
        step_mask = run.mask if not bool(attention_mask.all()) else None
        length = prompt_length
        for step in range(max_new):
            if step > 0 and decode_step is not None:
                # fresh one-token tensors each step: a compiled step sees the same inputs every time
                logits = decode_step(
                    next_tokens[:, None], run.positions[:, length - 1, None].clone(),
                    run.slots[length - 1:length].clone(), step_mask, cache,
                ).float()
                cache.advance(1)
            else:
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
                # max's index is argmax's (the first of ties, NaN first) at a third of its time here
                next_tokens = step_scores.max(dim=-1).indices
            next_tokens = torch.where(unfinished, next_tokens, pad_id)
            run.tokens[:, length] = next_tokens
            length += 1
            # copies: a CUDA-graph step hands back the same output buffer every step
            if config.output_scores:
                scores.append(step_scores.clone())
            if config.output_logits:
                raw_logits.append(logits.clone())
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if stopping:  # stop strings, max_time, the caller's criteria: read on the host every step
                halted |= stopping(run.tokens[:, :length], step_scores)
                if eos_tensor is not None:  # as in transformers, a halted row is padded only then
                    lengths.masked_fill_(unfinished & halted, length)
                    unfinished &= ~halted
                if bool((halted | ~unfinished).all()):
                    break
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


def _compile_arguments(compile_config: dict[str, Any] | None, device: torch.device,
                       native_kernels: bool = False, fused_int8: bool = False) -> dict[str, Any]:
    """`torch.compile` keyword arguments for the decode step: one full graph with static shapes;
    CUDA graphs on a GPU ("reduce-overhead"); on the CPU no guards on the model's modules
    (`skip_module_guards`), no check of each of the graph's ~500 inputs' sizes and strides before
    every step (`size_asserts`: 5% of an int4 step on 2 cores; dynamo's guards on the step's own
    inputs and `module_state` on the parameters cover them) and, with lamina's kernels (quantized,
    float32 and bf16 products), inductor's C++ wrapper, which calls them without Python in between
    (SmolLM2-135M int4: 144 → 157 tok/s, float32 39.4 → 41.1; a first compile of 1-2 minutes
    instead of 10-30 s on 2 cores, cached after). With int8 layers on the GPU (`fused_int8`),
    coordinate descent tuning as well: only with it does inductor turn a one-row product into a
    reduction that reads the int8 weight and converts it on the fly (SmolLM2-135M on an H200:
    612 tok/s through this path against 197 through `_weight_int8pack_mm`; a first compile of 75 s
    instead of 24).
    `compile_config` entries override."""
    settings: dict[str, Any] = dict(fullgraph=True, dynamic=False)
    if {"mode", "options"} & set(compile_config or {}):
        pass  # the caller's (torch.compile takes a mode or options, not both)
    elif device.type == "cuda" and fused_int8:  # "reduce-overhead" is `triton.cudagraphs`
        settings["options"] = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
    elif device.type == "cuda":
        settings["mode"] = "reduce-overhead"
    else:
        settings["options"] = {"guard_filter_fn": skip_module_guards, "size_asserts": False}
        if native_kernels:
            settings["options"]["cpp_wrapper"] = True
    settings.update(compile_config or {})
    return settings


def skip_module_guards(guards: list[Any]) -> list[bool]:
    """`torch.compile`'s guard filter for the CPU decode step: drop the guards on the model's modules
    and parameters, which dynamo otherwise checks before every step (SmolLM2-135M: ~1.2 ms of a 14 ms
    int8 step on 2 cores). What they would catch is checked once a `generate` call instead:
    `_decode_step` compiles again when `module_state` changes, and each compiled step runs its own
    copy of the code (`_own_code`), so no other model ever meets its graphs."""
    return [not entry.orig_guard.source.is_unspecialized_nn_module() for entry in guards]


def _own_code(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` bound to the same object through a copy of its function with a code object of its
    own: dynamo keeps compiled graphs on the code object, so this keeps them to this one compile."""
    function = method.__func__  # type: ignore[attr-defined]
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return types.MethodType(copy, method.__self__)  # type: ignore[attr-defined]


def _with_eager_fallback(model: Any, compiled: Callable[..., torch.Tensor], eager: Callable[..., torch.Tensor]):
    """The compiled step, falling back to `eager` for good (with a warning) if compiling fails.

    On the CPU its first call, which traces, makes the model's parameters and buffers attributes of
    the graph (dynamo's `install_free_tensors`) rather than ~370 inputs (SmolLM2-135M) that dynamo's
    bytecode gathers from the module tree before every step: 0.85-0.9 → 0.45-0.6 ms a step on 2
    cores. The graph holds the same tensors, so changes made in place reach it (tested)."""
    state = {"step": None}
    tracing = {"install_free_tensors": True} if model.device.type == "cpu" else {}

    def step(*args: Any) -> torch.Tensor:
        if state["step"] is not None:
            return state["step"](*args)
        try:
            with torch._dynamo.config.patch(**tracing):
                out = compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            warnings.warn(f"generate: compiling the decode step failed ({type(err).__name__}: {err}); "
                          "decoding eagerly", RuntimeWarning, stacklevel=3)
            model._compile_failed = True
            state["step"] = eager
            return eager(*args)
        state["step"] = compiled
        return out

    return step


def module_state(model: torch.nn.Module) -> tuple[Any, ...]:
    """What the guards `skip_module_guards` drops would check, as one comparable value: every
    module's identity, its plain attributes (flags, sizes, hooks, packed operands) and its
    parameters' and buffers' identities, shapes, strides, dtypes and devices (SmolLM2-135M: ~2 ms)."""
    return tuple((type(module), id(module), _attributes(module)) for module in model.modules())


def _attributes(module: torch.nn.Module) -> tuple[Any, ...]:
    return tuple((name, _described(value)) for name, value in vars(module).items()
                 if name not in _GENERATION_STATE and (not isinstance(value, dict) or value))


# what `generate` itself keeps on the model, which the step never reads
_GENERATION_STATE = frozenset({"_compiled_steps", "_kept_caches", "_generated_tokens", "_compile_failed", "_native"})


_PLAIN = frozenset({type(None), bool, int, float, str, torch.dtype, torch.device})


def _described(value: Any, depth: int = 0) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, torch.Tensor):
        strides = value.stride() if value.layout == torch.strided else value.layout  # sparse tensors have none
        return (id(value), tuple(value.shape), strides, value.dtype, value.device, value.requires_grad)
    if depth == 2 or isinstance(value, torch.nn.Module):
        return (kind, id(value))
    if isinstance(value, (tuple, list)):
        return (kind, tuple(_described(item, depth + 1) for item in value))
    if isinstance(value, dict):  # parameters, buffers, submodules, hooks
        return (kind, tuple((key, _described(item, depth + 1)) for key, item in value.items()))
    if isinstance(value, (set, frozenset)):
        return (kind, frozenset(value))
    return (kind, id(value))


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

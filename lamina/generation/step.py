"""The decode step `generate` runs after the prompt, and everything a model keeps for it between calls.

`decode_steps(model)` is the one object that holds it (`DecodeSteps`, in one attribute of the model):
which step runs (the model's eager `decode_step`, that step compiled by `torch.compile`, or lamina's
native step on the CPU), the compile policy, the static caches a compiled step keeps, the tokens asked
for so far and whether compiling failed. `prepare` chooses for one run; the step it returns has the
contract of `Step`, so a serving engine can drive the same object as `generate` does.

The compiled step is used when `compile_config` asks for it, or, unless `disable_compile`, once the
model has been asked for `AUTO_COMPILE_TOKENS` tokens in this process: compiling costs seconds to a
minute and saves part of each step, so it pays only over many tokens (bench/RESULTS.md). Any failure
to compile falls back to the eager step with a warning. On the CPU, a model that lamina's native step
serves (`native_step`) decodes through it instead, eager or compiled alike: it is faster than both and
has nothing to compile.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from ..errors import UnsupportedError
from ..quantization.linear import int8_fused_on_cuda, uses_lamina_kernels
from .config import GenerationConfig
from .native_step import native_step

# tokens (batch × new tokens, summed over a model's generate calls) after which the step is compiled
AUTO_COMPILE_TOKENS = 1024
# a compiled step's static cache holds a multiple of this many slots, so runs of similar lengths
# share one graph
COMPILED_CAPACITY_STEP = 256


class Step(Protocol):
    """One decoding step over a batch whose rows may be at different positions.

    `step(input_ids, position_ids, cache_position, attention_mask, cache) → logits (batch, vocab)`:
    - `input_ids (batch, 1)`: each row's newest token, not yet in the cache;
    - `position_ids (batch, 1)`: each row's own position (rotary angles are taken per row), which
      need not be the same for every row;
    - `cache_position (1,)`: the cache slot this step writes for every row. Slots and positions
      advance together, so a row that joined the batch later, or has left padding, sits at a
      constant offset: its slot `s` holds its position `s - offset`, and a sliding window counted in
      slots is the same window counted in positions;
    - `attention_mask (batch, ≥ slot + 1)` or None: 0 marks the slots a row must not attend (its
      padding, the slots before it joined), indexed by slot; None: every slot up to this one;
    - `cache`: the model's cache (`lamina.cache.Cache`), full-attention layers static and sliding
      layers rings when the step should be the compiled or the native one (any other cache runs
      the model's eager step). The step writes the new keys and values in place; the caller
      advances the cache's token count (`cache.advance(1)`).
    Over a block pool (a cache with `block_tables`, `lamina.cache.BlockTables`: the server's
    continuous batch) every row has its own cache position: `cache_position (batch, 1)` is each
    row's position, the same as `position_ids`, `attention_mask` is None, and the rows' blocks
    already hold their new token's slot (`DecodeSteps.batch_step`).
    The returned logits are float32 or the model's dtype; a compiled step may hand back the same
    buffer every call (copy what you keep).
    """

    def __call__(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor, cache_position: torch.LongTensor,
                 attention_mask: torch.Tensor | None, cache: Any) -> torch.Tensor: ...


@dataclass
class Prepared:
    """What one run decodes with: `capacity` positions for its buffers (and a static cache), the
    `cache` (None when `use_cache` is off), the one-token `step` after the prompt (None: the model's
    `forward` runs every step) and which step that is (`kind`: "native", "compiled", "eager" or
    "forward")."""

    capacity: int
    cache: Any
    step: Step | None
    kind: str


class DecodeSteps:
    """What decoding keeps for one model between calls (module docstring); `decode_steps(model)`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.forget()

    def forget(self) -> None:
        """Drop every kept step and cache, the token count and a failed compile: the next run
        chooses afresh."""
        self.generated_tokens = 0  # asked for so far, for the compile policy
        self.compile_failed = False  # compiling failed once: the eager step from then on
        self.last_kind: str | None = None  # the kind of the step `prepare` chose last
        self._native: tuple[tuple[Any, ...], Step | None] | None = None  # (module_state, native step or None)
        self._compiled: dict[str, tuple[tuple[Any, ...], Step]] = {}  # compile settings → (module_state, step)
        self._caches: dict[tuple[Any, ...], Any] = {}  # (batch, capacity, dtype, device) → a compiled step's cache

    def prepare(self, config: GenerationConfig, batch: int, total: int, new_tokens: int) -> Prepared:
        """The cache and the step for a run of `batch` rows, `total` positions (prompt + new) and
        `new_tokens` new tokens a row; counts the tokens towards the compile policy."""
        static = config.use_cache and _cache_kind(config) == "static"
        compiled = static and self._wants_compiled_step(config, batch * new_tokens)
        capacity = -(-total // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP if compiled else total
        cache = None
        if config.use_cache:
            cache = self._cache(batch, capacity, reuse=compiled) if static \
                else self.model.make_generation_cache(batch, None)
        step, kind = self.step(config, compiled) if cache is not None else (None, "forward")
        self.generated_tokens += batch * new_tokens
        self.last_kind = kind
        return Prepared(capacity, cache, step, kind)

    def _wants_compiled_step(self, config: GenerationConfig, new_tokens: int) -> bool:
        """Compile the decode step when asked to, or once enough tokens make it pay."""
        if config.disable_compile or not getattr(self.model, "compilable_decode", False) or self.compile_failed:
            return False
        if config.compile_settings() is not None:
            return True
        return self.generated_tokens + new_tokens >= AUTO_COMPILE_TOKENS

    def _cache(self, batch: int, capacity: int, reuse: bool) -> Any:
        """A static cache of `capacity` slots. A compiled step keeps one per batch size and capacity
        across calls (emptied, not reallocated): CUDA graphs replay on fixed addresses. The cache a
        run returns is then the one the next run of that shape reuses, as in transformers (and of
        the model's dtype and device: a model moved or cast since gets a new one)."""
        if not reuse:
            return self.model.make_generation_cache(batch, capacity)
        key = (batch, capacity, self.model.dtype, self.model.device)
        if key not in self._caches:
            self._caches[key] = self.model.make_generation_cache(batch, capacity)
        cache = self._caches[key]
        if cache is not None:
            cache.reset()
        return cache

    def step(self, config: GenerationConfig, compiled: bool) -> tuple[Step | None, str]:
        """The step after the prompt and its kind: the native step on the CPU where it serves the
        model, else the model's `decode_step` (compiled when `compiled`), else None ("forward")."""
        model = self.model
        eager = getattr(model, "decode_step", None)
        if eager is None:
            return None, "forward"
        if torch.is_autocast_enabled(model.device.type):
            # the native and compiled steps run in the weights' dtypes, not the autocast's
            return eager, "eager"
        if not (compiled or model.device.type == "cpu"):
            return eager, "eager"
        state = module_state(model)  # what both steps below are kept against
        native = self._native_step(state)
        if native is not None:
            return native, "native"
        if not compiled:
            return eager, "eager"
        settings = _compile_arguments(config.compile_settings(), model.device, uses_lamina_kernels(model),
                                      int8_fused_on_cuda(model))
        key = repr(sorted(settings.items()))
        if key not in self._compiled or self._compiled[key][0] != state:
            self._compiled[key] = (state, self._with_eager_fallback(torch.compile(_own_code(eager), **settings), eager))
        return self._compiled[key][1], "compiled"

    def batch_step(self) -> tuple[Step, str]:
        """The step of a continuous batch over a block pool (`Step`'s last paragraph) and its kind:
        the native step where it serves the model, as in `generate`, else the model's eager
        `decode_step`. Not a compiled step: its graph is for `generate`'s fixed shapes, and a
        continuous batch changes its rows and their lengths every step."""
        native = self._native_step(module_state(self.model))
        return (native, "native") if native is not None else (self.model.decode_step, "eager")

    def _native_step(self, state: tuple[Any, ...]) -> Step | None:
        """The native step for the model in `state` (kept while the model stays so), or None where
        it does not serve the model or the model is not on the CPU."""
        if self.model.device.type != "cpu":
            return None
        if self._native is None or self._native[0] != state:
            self._native = (state, native_step(self.model))
        return self._native[1]

    def _with_eager_fallback(self, compiled: Step, eager: Step) -> Step:
        """The compiled step, falling back to `eager` for good (with a warning) if compiling fails.

        On the CPU its first call, which traces, makes the model's parameters and buffers attributes of
        the graph (dynamo's `install_free_tensors`) rather than inputs that dynamo's bytecode gathers
        from the module tree before every step. The graph holds the same tensors, so changes made in
        place reach it (tested)."""
        chosen: dict[str, Step] = {}
        tracing = {"install_free_tensors": True} if self.model.device.type == "cpu" else {}

        def step(*args: Any) -> torch.Tensor:
            if "step" in chosen:
                return chosen["step"](*args)
            try:
                with torch._dynamo.config.patch(**tracing):
                    out = compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
                warnings.warn(f"generate: compiling the decode step failed ({type(err).__name__}: {err}); "
                              "decoding eagerly", RuntimeWarning, stacklevel=3)
                self.compile_failed = True
                chosen["step"] = eager
                return eager(*args)
            chosen["step"] = compiled
            return out

        return step


def decode_steps(model: torch.nn.Module) -> DecodeSteps:
    """The model's `DecodeSteps`, made on first use and kept in the model's one attribute for it."""
    steps = model.__dict__.get("_decode_steps")
    if steps is None:
        steps = model.__dict__["_decode_steps"] = DecodeSteps(model)
    return steps


def _compile_arguments(compile_config: dict[str, Any] | None, device: torch.device,
                       native_kernels: bool = False, fused_int8: bool = False) -> dict[str, Any]:
    """`torch.compile` keyword arguments for the decode step: one full graph with static shapes;
    CUDA graphs on a GPU ("reduce-overhead"); on the CPU no guards on the model's modules
    (`skip_module_guards`), no check of each of the graph's inputs' sizes and strides before every
    step (`size_asserts`: dynamo's guards on the step's own inputs and `module_state` on the
    parameters cover them) and, with lamina's kernels (quantized, float32 and bf16 products),
    inductor's C++ wrapper, which calls them without Python in between (at the price of a longer
    first compile, cached after). With int8 layers on the GPU (`fused_int8`), coordinate descent
    tuning as well: only with it does inductor turn a one-row product into a reduction that reads
    the int8 weight and converts it on the fly (bench/RESULTS.md, "GPU decoding").
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
    and parameters, which dynamo otherwise checks before every step. What they would catch is checked
    once a `generate` call instead: `DecodeSteps` compiles again when `module_state` changes, and
    each compiled step runs its own copy of the code (`_own_code`), so no other model ever meets its
    graphs."""
    return [not entry.orig_guard.source.is_unspecialized_nn_module() for entry in guards]


def _own_code(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` bound to the same object through a copy of its function with a code object of its
    own: dynamo keeps compiled graphs on the code object, so this keeps them to this one compile."""
    function = method.__func__  # type: ignore[attr-defined]
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return types.MethodType(copy, method.__self__)  # type: ignore[attr-defined]


def module_state(model: torch.nn.Module) -> tuple[Any, ...]:
    """What the guards `skip_module_guards` drops would check, as one comparable value: every
    module's identity, its plain attributes (flags, sizes, hooks, packed operands) and its
    parameters' and buffers' identities, shapes, strides, dtypes and devices. The model's
    `DecodeSteps`, which the step never reads, is left out."""
    return tuple((type(module), id(module), _attributes(module)) for module in model.modules())


def _attributes(module: torch.nn.Module) -> tuple[Any, ...]:
    return tuple((name, _described(value)) for name, value in vars(module).items()
                 if not isinstance(value, DecodeSteps) and (not isinstance(value, dict) or value))


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


# transformers' cache_implementation values → lamina's cache kinds (rolling buffers are automatic)
_CACHE_KINDS = {None: "static", "static": "static", "hybrid": "static", "sliding_window": "static", "dynamic": "dynamic"}


def _cache_kind(config: GenerationConfig) -> str:
    if config.cache_implementation not in _CACHE_KINDS:
        raise UnsupportedError(
            f"generate: cache_implementation {config.cache_implementation!r} is not supported "
            f"(expected one of {sorted(k for k in _CACHE_KINDS if k)})"
        )
    return _CACHE_KINDS[config.cache_implementation]

"""lamina's native decode step on the CPU: a whole one-token step of a Llama-architecture decoder in
one call into lamina's kernels (`lamina/kernels/decode_cpu.cpp`, `DecodeStep`).

The compiled step (`torch.compile`) runs the same row kernels, but as ~150 separate calls a token,
each through the dispatcher and its own parallel region, with inductor's kernels and Python between
them; the native step keeps the threads in one region for the whole token. SmolLM2-135M int4 on
2 cores: see bench/RESULTS.md for the figures.

It serves `generate` in place of `decode_step` (eager or compiled) wherever it can run the model
exactly as the layers do: a float32 causal LM of the shared decoder on the CPU (`DecoderForCausalLM`:
Llama, Mistral, Ministral, SmolLM2 …) with RMSNorm, rotary attention over the whole head, a SiLU-gated
MLP, no biases or experts, every projection and the head either a float32 `Linear` or an int8 / int4
layer on lamina's kernels, no hooks, in eval mode, with generate's cache (static for full-attention
layers, a ring of the window's slots for sliding ones).
Anything else keeps the step it had. `LAMINA_NATIVE_STEP=0` in the environment, or
`model.native_decode = False`, turns it off.

Numerics are the layers': the same row kernels (activations rounded to int8 per block of 32 in the
quantized products), RMSNorm, rotary and SiLU in float32; outputs agree with the eager step to
float32 summation order (tested, with the tokens).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable

import torch

from .. import kernels
from ..cache import RollingLayerCache, StaticLayerCache
from ..layers.linear import Linear
from ..layers.norms import RMSNorm
from ..quantization.linear import Int4Linear, Int8Linear

FLOAT32, INT8, INT4 = 0, 1, 2


def native_step(model: Any) -> Callable[..., torch.Tensor] | None:
    """A `decode_step`-compatible callable running `model` through lamina's native step, or None
    where it cannot (module docstring). Holds the model's tensors: build it again after changing
    the model (`generate` does, keyed on `module_state`)."""
    if os.environ.get("LAMINA_NATIVE_STEP") == "0" or not getattr(model, "native_decode", True):
        return None
    operands = _operands(model)
    if operands is None:
        return None
    tensors, kinds, sizes, scales, windows, eps = operands
    plan = torch.classes.lamina.DecodeStep(tensors, kinds, sizes, scales, windows, eps)
    return _Step(model, plan)


class _Step:
    """`decode_step(input_ids, position_ids, cache_position, attention_mask, cache)` through the
    native step; a cache other than `generate`'s (see `_buffers`) goes to the model's own step."""

    def __init__(self, model: Any, plan: Any) -> None:
        self.model = model
        self.plan = plan
        # the cache last seen (not kept alive), whether its layers are what the step writes, which are rings
        self._cache: tuple[Callable[[], Any], bool, list[int]] = (lambda: None, False, [])

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                 attention_mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        buffers = self._buffers(cache)
        if buffers is None or input_ids.shape[1] != 1:
            return self.model.decode_step(input_ids, position_ids, cache_position, attention_mask, cache)
        batch, slot = input_ids.shape[0], int(cache_position[0])
        cos, sin = self.model.decoder.rotary_emb(position_ids, torch.float32)
        padding = None if attention_mask is None else attention_mask.long().contiguous()
        logits = self.plan.step(input_ids.reshape(batch).contiguous(), cos.reshape(batch, -1).contiguous(),
                                sin.reshape(batch, -1).contiguous(), slot, padding, buffers)
        for index in self._cache[2]:  # what `RollingLayerCache.update` records besides keys and values
            ring = cache.layers[index]
            ring.positions[slot % ring.slots] = slot
            ring.written = True
        return logits

    def _buffers(self, cache: Any) -> list[torch.Tensor] | None:
        """The cache's key and value buffers, layer by layer, where each full-attention layer's cache
        is static and each sliding layer's a ring of its window, all allocated (the prompt's forward
        allocates them) and float32; else None."""
        if self._cache[0]() is not cache:
            layers = getattr(cache, "layers", None)
            windows = self.model.decoder.decoder_spec.layer_windows
            kinds = layers is not None and len(layers) == len(windows) and all(
                isinstance(layer, RollingLayerCache if window else StaticLayerCache)
                and (not window or layer.slots == window) for layer, window in zip(layers, windows))
            rings = [i for i, layer in enumerate(layers) if isinstance(layer, RollingLayerCache)] if kinds else []
            self._cache = (weakref.ref(cache), kinds, rings)
        if not self._cache[1] or any(layer.keys is None or layer.keys.dtype != torch.float32 for layer in cache.layers):
            return None
        return [buffer for layer in cache.layers for buffer in (layer.keys, layer.values)]


def _operands(model: Any) -> tuple[list[torch.Tensor], list[int], list[int], list[float], list[int], float] | None:
    """`DecodeStep`'s arguments for `model`, or None where the native step cannot run it."""
    decoder = getattr(model, "decoder", None)
    spec = getattr(decoder, "decoder_spec", None)
    if spec is None or model.training or model.device.type != "cpu" or model.dtype != torch.float32:
        return None
    if (spec.norm, spec.mlp, spec.position) != ("rms", "gated", "rope") or spec.activation not in ("silu", "swish") \
            or spec.attention_bias or spec.output_bias or spec.mlp_bias or spec.qk_norm or spec.num_experts \
            or spec.rotary_dim not in (None, spec.head_dim):
        return None
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return None
    if kernels.ops() is None or not hasattr(torch.classes.lamina, "DecodeStep"):
        return None
    embedding = decoder.embed_tokens.weight
    norms = [decoder.norm]
    for layer in decoder.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    if embedding.dtype != torch.float32 or not embedding.is_contiguous() \
            or any(type(n) is not RMSNorm or n.eps != spec.norm_eps or n.weight.dtype != torch.float32 for n in norms):
        return None
    tensors: list[torch.Tensor] = [embedding, decoder.norm.weight]
    kinds: list[int] = []

    def add(*products: Any) -> bool:
        described = [_product(product) for product in products]
        if None in described:
            return False
        for kind, operands in described:
            kinds.append(kind)
            tensors.extend(operands)
        return True

    if not add(model.lm_head):
        return None
    for layer in decoder.layers:  # each layer's norms, then its four products
        tensors += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        if not add(layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            return None
    sizes = [spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.intermediate_size,
             spec.num_layers, spec.vocab_size]
    scales = [float(layer.self_attn.scale) for layer in decoder.layers]
    windows = [window or 0 for window in spec.layer_windows]
    return [t.detach() for t in tensors], kinds, sizes, scales, windows, float(spec.norm_eps)


def _product(layer: Any) -> tuple[int, list[torch.Tensor]] | None:
    """A projection's kind and kernel operands: a float32 `Linear` without bias, or an int8 / int4
    layer whose packed operands are lamina's kernels' (computing in float32, without bias)."""
    if type(layer) is Linear:
        weight = layer.weight
        if layer.bias is None and weight.dtype == torch.float32 and weight.is_contiguous():
            return FLOAT32, [weight]
        return None
    if not isinstance(layer, (Int8Linear, Int4Linear)) or layer.bias is not None \
            or layer.compute_dtype not in (None, torch.float32) or layer._packed is None:
        return None
    ops = kernels.loaded()
    kernel, operands = layer._packed
    if isinstance(layer, Int8Linear) and kernel is ops.int8_linear:
        return INT8, list(operands)
    if isinstance(layer, Int4Linear) and kernel is ops.int4_linear:
        return INT4, list(operands)
    return None

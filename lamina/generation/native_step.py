"""lamina's native decode step on the CPU: a whole one-token step of a Llama-architecture decoder in
one call into lamina's kernels (`lamina/kernels/decode_cpu.cpp`, `DecodeStep`).

The compiled step (`torch.compile`) runs the same row kernels, but as separate calls a token, each
through the dispatcher and its own parallel region, with inductor's kernels and Python between them;
the native step keeps the threads in one region for the whole token (bench/RESULTS.md).

It serves `generate` in place of `decode_step` (eager or compiled) wherever it can run the model
exactly as the layers do. What it implements is an allow-list, `IMPLEMENTS`, checked against the
maths the decoder's spec says it needs (`DecoderSpec.step_maths`): any switch or value it does not
declare, a new one included, leaves the model to its own step. Beyond the spec it needs a float32
model on the CPU in eval mode, without hooks, whose norms are `RMSNorm`s and whose projections and
head are float32 `Linear`s or int8 / int4 layers on lamina's kernels, and generate's cache (static
for full-attention layers, a ring of the window's slots for sliding ones) or the server's block pool
(`lamina.cache.BlockTables`: each row at its own position, its keys read in the blocks, summed in
the order generate's cache would hold them). `LAMINA_NATIVE_STEP=0` in
the environment, or `model.native_decode = False`, turns it off.

Numerics are the layers': the same row kernels (activations rounded to int8 per block of 32 in the
quantized products), RMSNorm, rotary and SiLU in float32, summed in the eager step's order.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable

import torch

from .. import kernels
from ..cache import BlockTables, RollingLayerCache, StaticLayerCache
from ..errors import UnsupportedError
from ..layers.linear import Linear
from ..layers.norms import RMSNorm
from ..quantization.linear import Int4Linear, Int8Linear

# any value of a switch: the step never reads it (rotary angles are the model's own, computed
# before the call; dropout only trains; the rest matter only under a switch excluded above them)
ANY = object()
# what the native step implements: each switch of `DecoderSpec.step_maths` and the values it runs
IMPLEMENTS: dict[str, Any] = {
    "norm": ("rms",),
    "activation": ("silu", "swish"),
    "mlp": ("gated",),
    "position": ("rope",),
    "rotary": ("full",),
    "attention_bias": (False,),
    "output_bias": (False,),
    "mlp_bias": (False,),
    "qk_norm": (False,),
    "num_experts": (0,),
    "rope_parameters": ANY,
    "norm_bias": ANY,  # LayerNorm's
    "experts_per_token": ANY,
    "router_jitter": ANY,
    "upcast_attention": ANY,  # a float32 model's attention is float32 either way
    "attention_dropout": ANY,
    "residual_dropout": ANY,
    "dropout_after_attention": ANY,
    "embedding_dropout": ANY,
}


def implements(maths: dict[str, Any]) -> bool:
    """Whether the native step implements every switch value in `maths` (`DecoderSpec.step_maths`)."""
    return all(name in IMPLEMENTS and (IMPLEMENTS[name] is ANY or value in IMPLEMENTS[name])
               for name, value in maths.items())


def native_step(model: Any) -> Callable[..., torch.Tensor] | None:
    """A `decode_step`-compatible callable running `model` through lamina's native step, or None
    where it cannot (module docstring). Holds the model's tensors: build it again after changing
    the model (`DecodeSteps` does, keyed on `module_state`)."""
    if os.environ.get("LAMINA_NATIVE_STEP") == "0" or not getattr(model, "native_decode", True):
        return None
    arguments = _operands(model)
    if arguments is None:
        return None
    return _Step(model, torch.classes.lamina.DecodeStep(*arguments))


class _Step:
    """`decode_step(input_ids, position_ids, cache_position, attention_mask, cache)` through the
    native step, over `generate`'s cache (see `_buffers`) or a block pool (`block_tables`, the
    server's); any other cache, or more than one token a row, goes to the model's own step."""

    def __init__(self, model: Any, plan: Any) -> None:
        self.model = model
        self.plan = plan
        # the cache last seen (not kept alive), whether its layers are what the step writes, which are rings
        self._cache: tuple[Callable[[], Any], bool, list[int]] = (lambda: None, False, [])

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                 attention_mask: torch.Tensor | None, cache: Any, trace: torch.Tensor | None = None) -> torch.Tensor:
        """The `step.Step` contract; `trace (layers + 1, batch, hidden)`, where given, receives the
        hidden state entering each layer and the last layer's output, to compare with the eager
        step's (`hidden_states` of a forward over the same cache)."""
        tables = getattr(cache, "block_tables", None)
        if tables is not None and input_ids.shape[1] == 1 and trace is None \
                and all(keys.dtype == torch.float32 for keys in tables.keys):
            return self._paged(input_ids, position_ids, tables)
        buffers = self._buffers(cache)
        if buffers is None or input_ids.shape[1] != 1:
            if trace is not None:
                raise UnsupportedError("native step: a trace needs generate's cache (static and ring layers) "
                                       "and one token a row")
            return self.model.decode_step(input_ids, position_ids, cache_position, attention_mask, cache)
        batch, slot = input_ids.shape[0], int(cache_position[0])
        cos, sin = self.model.decoder.rotary_emb(position_ids, torch.float32)
        padding = None if attention_mask is None else attention_mask.long().contiguous()
        logits = self.plan.step(input_ids.reshape(batch).contiguous(), cos.reshape(batch, -1).contiguous(),
                                sin.reshape(batch, -1).contiguous(), slot, padding, buffers, trace)
        for index in self._cache[2]:
            cache.layers[index].record_positions(cache_position)
        return logits

    def _paged(self, input_ids: torch.Tensor, position_ids: torch.Tensor, tables: BlockTables) -> torch.Tensor:
        """The step over a block pool read in place: each row's token at its own position
        `position_ids (batch, 1)`, which is also its cache position."""
        batch = input_ids.shape[0]
        cos, sin = self.model.decoder.rotary_emb(position_ids, torch.float32)
        caches = [buffer for pair in zip(tables.keys, tables.values) for buffer in pair]
        return self.plan.step_paged(input_ids.reshape(batch).contiguous(), cos.reshape(batch, -1).contiguous(),
                                    sin.reshape(batch, -1).contiguous(), position_ids.reshape(batch).contiguous(),
                                    tables.tables, tables.firsts, tables.block_size, caches)

    def _buffers(self, cache: Any) -> list[torch.Tensor] | None:
        """The cache's key and value buffers, layer by layer, where each full-attention layer's cache
        is static and each sliding layer's a ring of its window, all allocated (the prompt's forward
        allocates them) and float32; else None."""
        if self._cache[0]() is not cache:
            layers = getattr(cache, "layers", None)
            windows = self.model.decoder.decoder_spec.layer_windows
            kinds = layers is not None and len(layers) == len(windows) and all(
                isinstance(layer, RollingLayerCache if window else StaticLayerCache)
                and (not window or 0 < layer.slots <= window) for layer, window in zip(layers, windows))
            rings = [i for i, layer in enumerate(layers) if isinstance(layer, RollingLayerCache)] if kinds else []
            self._cache = (weakref.ref(cache), kinds, rings)
        if not self._cache[1] or any(layer.keys is None or layer.keys.dtype != torch.float32 for layer in cache.layers):
            return None
        return [buffer for layer in cache.layers for buffer in (layer.keys, layer.values)]


def _operands(model: Any) -> tuple[list[torch.Tensor], list[int], list[int], list[float], list[int], float] | None:
    """`DecodeStep`'s arguments for `model` (in the order `DecodeStep.layout()` declares), or None
    where the native step cannot run it."""
    decoder = getattr(model, "decoder", None)
    spec = getattr(decoder, "decoder_spec", None)
    if spec is None or model.training or model.device.type != "cpu" or model.dtype != torch.float32:
        return None
    if not implements(spec.step_maths()):
        return None
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return None
    if kernels.ops() is None or not hasattr(torch.classes.lamina, "DecodeStep"):
        return None
    layout = torch.classes.lamina.DecodeStep.layout()
    norms = [decoder.norm]
    for layer in decoder.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    embedding = decoder.embed_tokens.weight
    if embedding.dtype != torch.float32 or not embedding.is_contiguous() \
            or any(type(n) is not RMSNorm or n.eps != spec.norm_eps or n.weight.dtype != torch.float32 for n in norms):
        return None
    groups = [(layout["model"], dict(embedding=embedding, final_norm=decoder.norm.weight, head=model.lm_head))]
    groups += [(layout["layer"], _layer_operands(layer)) for layer in decoder.layers]
    tensors: list[torch.Tensor] = []
    kinds: list[int] = []
    for names, operands in groups:
        for name in names:
            operand = operands[name]
            if isinstance(operand, torch.Tensor):
                tensors.append(operand.detach())
                continue
            product = _product(operand)
            if product is None:
                return None
            kinds.append(layout["kinds"].index(product[0]))
            tensors.extend(t.detach() for t in product[1])
    sizes = dict(hidden=spec.hidden_size, heads=spec.num_heads, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                 intermediate=spec.intermediate_size, layers=spec.num_layers, vocab=spec.vocab_size)
    scales = [float(layer.self_attn.scale) for layer in decoder.layers]
    windows = [window or 0 for window in spec.layer_windows]
    return tensors, kinds, [sizes[name] for name in layout["sizes"]], scales, windows, float(spec.norm_eps)


def _layer_operands(layer: Any) -> dict[str, Any]:
    """A decoder layer's operands by `DecodeStep.layout()`'s names: norm weights, and projections."""
    return dict(input_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                qkv=layer.self_attn.qkv_proj, o=layer.self_attn.o_proj, gate_up=layer.mlp.gate_up_proj,
                down=layer.mlp.down_proj)


def _product(layer: Any) -> tuple[str, list[torch.Tensor]] | None:
    """A projection's kind (a name in `DecodeStep.layout()`'s kinds) and kernel operands: a float32
    `Linear` without bias, or an int8 / int4 layer whose packed operands are lamina's kernels'
    (computing in float32, without bias)."""
    if type(layer) is Linear:
        weight = layer.weight
        if layer.bias is None and weight.dtype == torch.float32 and weight.is_contiguous():
            return "float32", [weight]
        return None
    if not isinstance(layer, (Int8Linear, Int4Linear)) or layer.bias is not None \
            or layer.compute_dtype not in (None, torch.float32) or layer._packed is None:
        return None
    ops = kernels.loaded()
    kernel, operands = layer._packed
    if isinstance(layer, Int8Linear) and kernel is ops.int8_linear:
        return "int8", list(operands)
    if isinstance(layer, Int4Linear) and kernel is ops.int4_linear:
        return "int4", list(operands)
    return None

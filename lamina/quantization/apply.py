"""`quantize(model, config)`: swap a model's `nn.Linear` layers for quantized ones, in place.

On a model with real weights the layers are quantized from them. On a model built on the meta
device (`from_pretrained` of a checkpoint whose config.json carries a `quantization_config`) empty
quantized layers are put in place for the checkpoint's quantized tensors to fill.
`QuantizeOnLoad` is the load's per-tensor hook that quantizes float weights as they are mapped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoints.io import release_loaded
from ..errors import UnsupportedError
from ..layers.fused import FusedPart
from ..layers.moe import Experts
from .config import BitsAndBytesConfig, QuantizationConfig, as_quantization_config
from .experts import QuantizedExperts, quantized_rows
from .linear import QuantizedLinear, new_layer


def quantize(model: nn.Module, config: Any = "int8", *, release_sources: bool = False) -> nn.Module:
    """Quantize every `nn.Linear` of `model` (except `config.modules_to_not_convert`) in place and
    return the model.

    `config`: a `QuantizationConfig`, a `BitsAndBytesConfig`, a method name ("int8", "int4",
    "nf4") or a config.json `quantization_config` dict. Records `model.quantization_backend`
    ("lamina" or "bitsandbytes") and writes the config into `model.config.quantization_config`,
    so `save_pretrained` stores it and `from_pretrained` rebuilds the layers.

    `release_sources`: drop the file pages behind each float weight as soon as it is quantized, and
    the allocator's freed blocks (`from_pretrained` does, on weights just mapped that nothing has
    written), so peak memory stays near the quantized model's bytes.
    """
    wanted = as_quantization_config(config)
    done = getattr(model, "quantization_method", None)
    if done is not None:
        if done.to_dict() != wanted.to_dict():
            raise UnsupportedError(
                f"quantize: the model is already quantized as {done.to_dict()}, cannot requantize as {wanted.to_dict()}"
            )
        return model
    if isinstance(config, BitsAndBytesConfig) and _bitsandbytes_usable(model):
        _quantize_with_bitsandbytes(model, config)
        backend = "bitsandbytes"
    else:
        _replace_linears(model, wanted, release_loaded if release_sources else None)
        backend = "lamina"
    model.quantization_method = wanted
    model.quantization_backend = backend
    model_config = getattr(model, "config", None)
    if model_config is not None:
        _set_config_entry(model_config, "quantization_config", wanted.to_dict())
        if getattr(model_config, "tie_word_embeddings", False) and _output_embeddings_quantized(model):
            # the output layer now has its own (quantized) weight: it is saved, not re-tied, on load
            model_config.tie_word_embeddings = False
    return model


def _replace_linears(model: nn.Module, config: QuantizationConfig,
                     release: Callable[[torch.Tensor], None] | None = None) -> None:
    linears = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, Experts)) and not isinstance(module, FusedPart)]
    for name, module in linears:
        if isinstance(module, Experts):
            layer = quantized_experts(name, module, config, release)
        else:
            layer = quantized_layer(name, module, config, None if module.weight.is_meta else module.weight, release)
        if layer is not None:
            set_submodule(model, name, layer)


def layer_method(config: QuantizationConfig, name: str, *widths: int) -> str | None:
    """The method `config` wants for the module `name` whose products take inputs `widths` wide;
    None where it stays in full precision (so listed, or a width that holds no whole groups)."""
    method = config.method_for(name)
    if method is None or (method != "int8" and any(width % config.group_size for width in widths)):
        return None
    return method


def experts_method(name: str, module: Experts, config: QuantizationConfig) -> str | None:
    """`layer_method` for stacked experts (their products take hidden- and intermediate-wide inputs)."""
    return layer_method(config, name, module.gate_up_proj.shape[2], module.down_proj.shape[2])


def quantized_experts(name: str, module: Experts, config: QuantizationConfig,
                      release: Callable[[torch.Tensor], None] | None = None) -> QuantizedExperts | None:
    """The quantized stack `config` wants in place of the experts `name`, or None."""
    method = experts_method(name, module, config)
    if method is None:
        return None
    return QuantizedExperts.quantized(module, method, config.compute_dtype, config.group_size, release)


def quantized_layer(name: str, module: nn.Linear, config: QuantizationConfig, weight: torch.Tensor | None,
                    release: Callable[[torch.Tensor], None] | None = None) -> QuantizedLinear | None:
    """The quantized layer `config` wants in place of the linear layer `name`, quantized from
    `weight` (None: left empty, for a checkpoint's quantized tensors to fill), with `module`'s bias
    where it has a real one; None where the layer stays in full precision."""
    method = layer_method(config, name, module.in_features)
    if method is None:
        return None
    # quantizing replaces every tensor of the layer: no placeholders to allocate first
    device = module.weight.device if weight is None else "meta"
    # a layer split over ranks (lamina.distributed) keeps its split: its quantized form's class and arguments
    split = getattr(module, "quantized_form", None)
    layer = new_layer(method, module.in_features, module.out_features, config.group_size,
                      **({} if split is None else split()), bias=module.bias is not None,
                      compute_dtype=config.compute_dtype, device=device)
    if weight is not None:
        with torch.no_grad():
            layer.set_weight(weight.detach(), release)
    if module.bias is not None and not module.bias.is_meta:
        layer.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return layer


class QuantizeOnLoad:
    """`from_pretrained(quantization_config=)`'s hook on the load (see `PreTrainedModel.load_checkpoint`).

    Called with each tensor as the load maps it, it quantizes a linear layer's weight (or a stack
    of experts' projection) at once, keeps the quantized layer aside and hands the load a meta
    placeholder of the weight's shape: the float weights are never all in memory, only one
    layer's (its file pages released as it is quantized). `finish()`, after the load, swaps the
    quantized layers in with the biases the load gave.
    """

    def __init__(self, model: nn.Module, config: Any) -> None:
        self.model = model
        self.config = as_quantization_config(config)
        self.layers: dict[str, QuantizedLinear] = {}
        self.expert_parts: dict[str, dict[str, QuantizedLinear]] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`, mapped to the model's parameter `name`, or the placeholder of its quantized copy."""
        module_name, _, attr = name.rpartition(".")
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            return tensor
        if isinstance(module, Experts) and attr in ("gate_up_proj", "down_proj"):
            # Mixtral's stacked experts: each projection quantized over all experts' rows
            method = experts_method(module_name, module, self.config)
            if method is None or tuple(tensor.shape) != tuple(getattr(module, attr).shape):
                return tensor
            self.expert_parts.setdefault(module_name, {})[attr] = quantized_rows(
                tensor, method, self.config.compute_dtype, self.config.group_size, release_loaded)
        elif attr == "weight" and isinstance(module, nn.Linear) and tuple(tensor.shape) == tuple(module.weight.shape):
            layer = quantized_layer(module_name, module, self.config, tensor, release_loaded)
            if layer is None:
                return tensor
            self.layers[module_name] = layer
        else:
            return tensor
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")

    def finish(self) -> None:
        for name, layer in self.layers.items():
            bias = self.model.get_submodule(name).bias
            if bias is not None and not bias.is_meta:
                layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            set_submodule(self.model, name, layer)
        for name, parts in self.expert_parts.items():
            experts = self.model.get_submodule(name)
            set_submodule(self.model, name, QuantizedExperts(experts.gate_up_proj.shape[0], parts["gate_up_proj"],
                                                             parts["down_proj"], experts.act_name))


def quantize_on_load(model: nn.Module, config: Any) -> QuantizeOnLoad | None:
    """The load hook that quantizes `model`'s weights to `config` as they are mapped; None for a
    `BitsAndBytesConfig`, which quantizes its own way once the weights are in."""
    return None if isinstance(config, BitsAndBytesConfig) else QuantizeOnLoad(model, config)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    owner_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner_name) if owner_name else model, attr, module)


def _output_embeddings_quantized(model: nn.Module) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    return getter is not None and isinstance(getter(), QuantizedLinear)


def _set_config_entry(config: Any, key: str, value: Any) -> None:
    """Set a key the config class does not declare, so that it is written to config.json."""
    setattr(config, key, value)
    extra = getattr(config, "_extra_keys", None)
    if extra is not None and key not in extra:
        extra.append(key)


def _bitsandbytes_usable(model: nn.Module) -> bool:
    """bitsandbytes quantizes on CUDA; on any other device (or without the package) lamina's own
    layers run instead."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cuda"


def _quantize_with_bitsandbytes(model: nn.Module, config: BitsAndBytesConfig) -> None:
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or isinstance(module, FusedPart) or config.to_lamina().method_for(name) is None:
            continue
        weight = module.weight.detach()
        if config.load_in_4bit:
            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=config.bnb_4bit_compute_dtype, quant_type="nf4",
                                      compress_statistics=config.bnb_4bit_use_double_quant)
            layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=config.bnb_4bit_use_double_quant)
        else:
            layer = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=module.bias is not None,
                                        has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
        if module.bias is not None:
            layer.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        owner_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner_name) if owner_name else model, attr, layer.to(weight.device))

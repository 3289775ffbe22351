"""peft's LoRA over lamina's quantized layers (QLoRA on every projection, `o_proj` and `down_proj` included).

peft wraps the layer types it knows (`nn.Linear` and the quantized layers of the libraries it
supports); lamina's `Int8Linear` / `Int4Linear` / `NF4Linear` are none of those, and a part of a
quantized fused layer (`FusedPart`, q/k/v and gate/up) is an `nn.Linear` whose weight is a
dequantized copy, into which peft's own merge would write in vain. `quantized_lora(config)` registers
`QuantizedLoraLinear` for both through peft's custom-module dispatch:

    from lamina.quantization.lora import quantized_lora
    model = peft.get_peft_model(model, quantized_lora(peft.LoraConfig(target_modules=["q_proj", "o_proj", …])))

Training runs the quantized product and adds the adapter (gradients reach the adapter through the
frozen quantized base); adapters save in PEFT's format under the names transformers' model has; a
merge dequantizes the base weight, adds the adapter's product to its rows and quantizes the sum
again (as peft does for bitsandbytes' 4-bit layers), so `merge_and_unload` leaves quantized layers.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge

from ..errors import InputError, UnsupportedError
from ..layers.fused import FusedPart
from .linear import QuantizedLinear


def quantized_lora(config: LoraConfig) -> LoraConfig:
    """`config`, with lamina's quantized layers and fused parts wrapped by `QuantizedLoraLinear`."""
    config._register_custom_module({QuantizedLinear: QuantizedLoraLinear, FusedPart: QuantizedLoraLinear})
    return config


def _quantized_rows(layer: torch.nn.Module) -> tuple[QuantizedLinear, slice] | None:
    """The quantized layer holding `layer`'s weight and the rows that are `layer`'s; None for a float one."""
    if isinstance(layer, QuantizedLinear):
        return layer, slice(None)
    if isinstance(layer, FusedPart) and isinstance(layer.fused, QuantizedLinear):
        return layer.fused, slice(layer.start, layer.stop)
    return None


class QuantizedLoraLinear(LoraLinear):
    """peft's LoRA `Linear` around a quantized layer or a fused part (`(…, in) → (…, out)`), merging by
    requantizing; around a float fused part it is peft's `Linear` unchanged."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        found = _quantized_rows(self.get_base_layer())
        if found is None:
            super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
            return
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter in self.lora_A:
                self._add_delta(found, adapter, 1.0, safe_merge)
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        found = _quantized_rows(self.get_base_layer())
        if found is None:
            super().unmerge()
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                self._add_delta(found, adapter, -1.0, safe=False)

    def _add_delta(self, found: tuple[QuantizedLinear, slice], adapter: str, sign: float, safe: bool) -> None:
        """Requantize the base weight plus `sign` × the adapter's `(out, in)` product (and bias)."""
        if adapter in self.lora_variant:
            raise UnsupportedError(
                f"LoRA merge: adapter {adapter!r} is a LoRA variant (DoRA, aLoRA, …); lamina merges plain LoRA "
                "adapters into quantized layers only")
        layer, rows = found
        weight = layer.dequantize(torch.float32)
        weight[rows] += sign * self.get_delta_weight(adapter).float()
        if safe and not torch.isfinite(weight).all():
            raise InputError(f"LoRA merge (safe_merge=True): adapter {adapter!r} gives non-finite weights; the base is left unmerged")
        layer.set_weight(weight)
        if self.lora_bias[adapter]:
            layer.bias.data[rows] += sign * self.lora_B[adapter].bias.to(layer.bias.dtype)

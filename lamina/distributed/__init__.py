"""Beyond one device: tensor and expert parallelism over `torch.distributed`, and device maps.

`from_pretrained` hands its placement arguments to `place`, which returns None (the whole model on
one device, as before) or a plan with two steps around the load: `merge(name, merge, sources)`
builds each parameter's local part as it is mapped, and `finish(model)` puts the loaded model where
it belongs (`lamina.modeling.Placement`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedError
from ..quantization.config import BitsAndBytesConfig, as_quantization_config
from .device_map import DeviceMap, is_multi_device, make_device_map
from .runtime import agree, fingerprint, make_groups
from .tensor_parallel import TensorParallel

__all__ = ["DeviceMap", "TensorParallel", "place"]


def place(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device_map: Any = None,
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | None = None,
    tp_plan: str | None = None,
    tp_size: int | None = None,
    ep_size: int | None = None,
    device_mesh: Any = None,
    quantizing: Any = None,
) -> TensorParallel | DeviceMap | None:
    """The plan for loading `model` (built on the meta device) from `tensors` in `dtype`, or None
    for one device.

    `tp_plan="auto"` (or a `tp_size`, `ep_size` or `device_mesh`) splits the model over the ranks of
    the process group (`torchrun --nproc-per-node N`): see `tensor_parallel`. Every rank checks that
    the others load the same config and checkpoint before reading any weight. A `device_map` over
    several devices or the disk ("balanced", "sequential", "auto" with `max_memory`, or a dict)
    places its layers: see `device_map`. `quantizing`: the quantization config the load quantizes
    the model's float weights to, or None. Split over ranks, quantized layers (of a quantized
    checkpoint, or quantized as they load) keep whole rows and whole groups on each rank; a device
    map takes none, as its offloaded layers stay views of the checkpoint's float weights.
    """
    quantized = quantizing is not None or getattr(model.config, "quantization_config", None) is not None
    splits = tp_plan is not None or tp_size is not None or ep_size is not None or device_mesh is not None
    maps = is_multi_device(device_map) or (device_map == "auto" and max_memory is not None)
    if splits and device_map is not None:
        raise ConfigError(f"device_map: a model split over ranks (tp_plan, tp_size, ep_size, device_mesh) is placed "
                          f"on each rank's device; found device_map={device_map!r} as well")
    if maps:
        if quantized:
            raise UnsupportedError("device_map: quantized models are placed on one device; found a map over several")
        return make_device_map(model, tensors, device_map, max_memory, offload_folder, dtype)
    if not splits:
        if getattr(tensors, "tensor_parallel_size", None) is not None:
            raise ConfigError("tp_plan: this checkpoint is split for tensor-parallel ranks; load it with "
                              "tp_plan='auto' under torchrun")
        return None
    if tp_plan not in (None, "auto"):
        raise ConfigError(f"tp_plan: expected 'auto' (lamina's plan for every family), found {tp_plan!r}")
    groups = make_groups(tp_size, ep_size, device_mesh)
    agree(f"{type(model).__name__}.from_pretrained", fingerprint(model.config, tensors))
    presharded = getattr(tensors, "tensor_parallel_size", None)
    if presharded is not None and (presharded != groups.tp_size or groups.ep_size != 1):
        raise ConfigError(f"tp_size: the checkpoint is split for {presharded} tensor-parallel ranks, "
                          f"found tp_size {groups.tp_size} × ep_size {groups.ep_size}")
    quantization = None if quantizing is None else as_quantization_config(quantizing)
    if isinstance(quantizing, BitsAndBytesConfig) and groups.device.type == "cuda":
        raise UnsupportedError("tp_plan: bitsandbytes' layers are not split over ranks; pass a lamina "
                               "QuantizationConfig (int8, int4 or nf4)")
    plan = TensorParallel(groups, presharded=presharded is not None, quantization=quantization)
    plan.apply(model)
    return plan

"""Device maps: a model's layers spread over GPUs, the CPU and the disk, as accelerate's big-model
inference places them, for models larger than any one device.

`device_map` is a dict from module names to devices (`{"model.layers.0": 0, …, "lm_head": "cpu"}`:
a GPU index, "cuda:N", "cpu", or "disk" / "meta" for weights left on disk), or a strategy that
builds one from the model's placement units (each decoder or encoder layer whole, and the
modules around the layers): "auto" / "sequential" fill the GPUs in order, then the CPU, then the
disk; "balanced" gives each GPU an even share first. `max_memory` (`{0: "10GiB", "cpu": "30GiB"}`)
caps what each device takes; by default a GPU's free memory and the CPU's available memory.

Loading places each tensor as the checkpoint is mapped, so no device ever holds the whole model.
Weights on disk stay views of a memory-mapped file: the checkpoint's own where its tensor is used
as stored, else a copy written once to `offload_folder`; each such layer pages its weights in when
it runs and drops them after. Each placed module moves its inputs to its device before it runs
(activations cross devices between layers; outputs stay where the last layer left them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoints.io import SafetensorsFile, is_mapped, parse_size, release_mapped_pages
from ..errors import CheckpointError, ConfigError, UnsupportedError

DISK = "disk"
STRATEGIES = ("auto", "balanced", "sequential")
# what a strategy leaves free on each device for activations, caches and the allocator
HEADROOM = 0.9


def is_multi_device(device_map: Any) -> bool:
    """Whether `device_map` asks for more than one device (else `from_pretrained` places the whole model)."""
    if isinstance(device_map, str) and device_map in STRATEGIES[1:]:
        return True
    if isinstance(device_map, Mapping):
        return len({str(value) for value in device_map.values()}) > 1 or any(
            str(value) in (DISK, "meta") for value in device_map.values())
    return False


def device_name(value: Any, where: str) -> str:
    """A device map value as "cuda:N", "cpu" or "disk", checked against this machine."""
    if isinstance(value, torch.device):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"cuda:{value}"
    if value in (DISK, "meta"):
        return DISK
    if value == "cuda":
        value = "cuda:0"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: expected a GPU index, 'cuda:N', 'cpu' or 'disk', found {value!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:
            raise UnsupportedError(f"{where}: places weights on {value!r}, but this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise UnsupportedError(f"{where}: lamina's device maps place weights on CUDA devices, the CPU or the disk, "
                               f"found {value!r}")
    return str(device)


def placement_units(module: nn.Module, prefix: str = "") -> list[str]:
    """The modules a strategy places whole: each entry of a `ModuleList` (a layer), and around the
    lists each child that holds parameters (embeddings, the final norm, heads)."""
    units = []
    for name, child in module.named_children():
        full = prefix + name
        if isinstance(child, nn.ModuleList):
            units += [f"{full}.{index}" for index in range(len(child))]
        elif any(isinstance(inner, nn.ModuleList) for inner in child.modules()):
            units += placement_units(child, full + ".")
        elif next(child.parameters(), None) is not None:
            units.append(full)
    return units


def _owner(name: str, keys: list[str]) -> str | None:
    """The longest key that is `name` or a module above it."""
    best = None
    for key in keys:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _budgets(max_memory: Mapping[Any, Any] | None) -> list[tuple[str, float]]:
    """(device, bytes) in the order a strategy fills them: GPUs, the CPU, then the disk."""
    given = {device_name(key, "max_memory"): value for key, value in (max_memory or {}).items()}
    devices = [f"cuda:{index}" for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    budgets = []
    for device in [*devices, "cpu"]:
        if device in given:
            try:
                budgets.append((device, float(parse_size(given[device]))))
            except CheckpointError:
                raise ConfigError(f"max_memory[{device!r}]: expected bytes or a size like '10GiB', "
                                  f"found {given[device]!r}") from None
        elif max_memory is None:  # a max_memory leaves out the devices it does not name
            budgets.append((device, HEADROOM * _free_bytes(device)))
    return [*budgets, (DISK, float("inf"))]


def _free_bytes(device: str) -> float:
    if device.startswith("cuda"):
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return float("inf")


def strategy_map(model: nn.Module, strategy: str, max_memory: Mapping[Any, Any] | None,
                 dtype: torch.dtype) -> dict[str, str]:
    """Units → devices: in order, each on the first device with room left."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for unit in placement_units(model):
        total = 0
        for param in model.get_submodule(unit).parameters():
            if id(param) not in seen:  # a tied weight counts once, with its first user
                seen.add(id(param))
                total += param.numel() * (dtype.itemsize if param.is_floating_point() else param.element_size())
        sizes[unit] = total
    budgets = _budgets(max_memory)
    gpus = [index for index, (device, _) in enumerate(budgets) if device.startswith("cuda")]
    if strategy == "balanced" and len(gpus) > 1:
        share = sum(sizes.values()) / len(gpus) + max(sizes.values())
        budgets = [(device, min(room, share) if index in gpus else room) for index, (device, room) in enumerate(budgets)]
    placement, index, used = {}, 0, 0.0
    for unit, size in sizes.items():
        while used + size > budgets[index][1]:
            index, used = index + 1, 0.0
        placement[unit] = budgets[index][0]
        used += size
    return placement


class DeviceMap:
    """A resolved device map: module names → "cuda:N", "cpu" or "disk", applied as the load maps each tensor."""

    def __init__(self, model: nn.Module, placement: dict[str, str], offload_folder: str | Path | None,
                 checkpoint: Mapping[str, torch.Tensor]) -> None:
        self.placement = placement
        self.offload_folder = Path(offload_folder) if offload_folder is not None else None
        # the mappings that weights on disk view: the checkpoint's, and the files written to offload_folder
        self.mappings: list[Mapping[str, torch.Tensor]] = [checkpoint]
        keys = list(placement)
        for name in dict(model.named_parameters()):
            if _owner(name, keys) is None:
                raise ConfigError(f"device_map: no entry places {name!r} (keys name modules, e.g. "
                                  f"{placement_units(model)[:3]})")
        ties = getattr(model, "_active_ties", lambda: {})()
        for target, source in ties.items():  # a tied weight lives with its source
            owner = _owner(target, keys)
            if owner is not None and owner == target.rpartition(".")[0]:
                placement[owner] = self.device_of(source)

    def device_of(self, name: str) -> str:
        return self.placement[_owner(name, list(self.placement))]

    def merge(self, name: str, merge: Callable[[list[torch.Tensor]], torch.Tensor], sources: list[torch.Tensor]) -> torch.Tensor:
        """Parameter `name` from its checkpoint `sources`, on its device (or on disk)."""
        merged = merge(sources)
        device = self.device_of(name)
        if device != DISK:
            return merged.to(device)
        return merged if is_mapped(merged) else self._offload(name, merged)

    def _offload(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor built from the checkpoint (joined, converted) written to `offload_folder` and mapped back."""
        if self.offload_folder is None:
            raise ConfigError(f"device_map: {name!r} goes to disk but is not stored as it is used (joined or "
                              f"converted from the checkpoint): pass offload_folder= to write it there")
        self.offload_folder.mkdir(parents=True, exist_ok=True)
        path = self.offload_folder / f"{name}.safetensors"
        save_file({name: tensor.contiguous()}, path)
        file = SafetensorsFile(path)
        self.mappings.append(file)
        return file[name]

    def finish(self, model: nn.Module) -> None:
        """Hooks that move each placed module's inputs to its device and drop a disk module's pages
        after it runs; `model.hf_device_map` records the placement, as in transformers."""
        for key, device in self.placement.items():
            module = model.get_submodule(key)
            runs_on = torch.device("cpu" if device == DISK else device)
            module.register_forward_pre_hook(_inputs_to(runs_on), with_kwargs=True)
            if device == DISK:
                module.register_forward_hook(_release_weights)
        model.hf_device_map = dict(self.placement)
        model.native_decode = False  # lamina's native step runs no hooks
        model.offload_mappings = self.mappings  # kept open while the model lives


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    return value


def _inputs_to(device: torch.device):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _moved(args, device), _moved(kwargs, device)

    return hook


def _release_weights(module: nn.Module, args: tuple, output: Any) -> None:
    for param in module.parameters():
        release_mapped_pages(param)


def make_device_map(model: nn.Module, checkpoint: Mapping[str, torch.Tensor], device_map: Any,
                    max_memory: Mapping[Any, Any] | None, offload_folder: str | Path | None,
                    dtype: torch.dtype) -> DeviceMap:
    """Resolve a strategy or check a dict (every device present on this machine)."""
    if isinstance(device_map, str):
        placement = strategy_map(model, device_map, max_memory, dtype)
    else:
        placement = {str(key): device_name(value, f"device_map[{key!r}]") for key, value in device_map.items()}
        for key in placement:
            try:
                model.get_submodule(key)
            except AttributeError:
                raise ConfigError(f"device_map: {key!r} is not a module of {type(model).__name__}") from None
    return DeviceMap(model, placement, offload_folder, checkpoint)

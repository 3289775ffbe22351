"""A tensor-parallel checkpoint layout: each rank's parts of a model in a file of its own, so a
rank of a split load opens one file and reads every byte of it, and no other.

```
DST/config.json  generation_config.json  tokenizer files
DST/tensor_parallel.json                 {"tp_size": N, "files": ["rank-00-of-02.safetensors", …]}
DST/rank-00-of-02.safetensors            rank 0's part of every parameter, under lamina's names
```

`lamina convert SRC DST --tp N` writes it (`save_tensor_parallel`); `from_pretrained(DST,
tp_plan="auto")` under `torchrun --nproc-per-node N` reads it (`load_tensor_parallel_layout`, one of
the formats `from_pretrained` recognises). It is lamina's own: transformers reads the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from ..checkpoints.io import SafetensorsFile, atomic_directory
from ..errors import CheckpointError, ConfigError
from ..quantization import quantize
from .runtime import Groups
from .tensor_parallel import TensorParallel

INDEX = "tensor_parallel.json"


class RankFile(SafetensorsFile):
    """One rank's file of the layout; `tensor_parallel_size` tells the load its parts are cut already."""

    def __init__(self, path: Path, tensor_parallel_size: int) -> None:
        super().__init__(path)
        self.tensor_parallel_size = tensor_parallel_size
        self.description = str(path)


def rank_file_name(rank: int, size: int) -> str:
    return f"rank-{rank:02d}-of-{size:02d}.safetensors"


def save_tensor_parallel(model: nn.Module, destination: str | os.PathLike, tp_size: int) -> Path:
    """Write `model` (whole, on one process) as `tp_size` ranks' files plus its config (module docstring)."""
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError(f"--tp: expected a positive number of ranks, found {tp_size!r}")
    quantization = getattr(model.config, "quantization_config", None)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    for tied in model._active_ties():
        state.pop(tied, None)
    with atomic_directory(destination) as tmp:
        model.save_config_files(tmp)
        files = []
        for rank in range(tp_size):
            plan = TensorParallel(Groups.offline(rank, tp_size))
            with torch.device("meta"):
                skeleton = type(model)(model.config)
            if quantization is not None:  # the plan cuts the quantized layers' codes, scales and minimums
                quantize(skeleton, quantization)
            plan.apply(skeleton)
            parts = {name: plan.local(name, tensor).contiguous() for name, tensor in state.items()}
            files.append(rank_file_name(rank, tp_size))
            save_file(parts, tmp / files[-1], metadata={"format": "pt", "tp_rank": str(rank), "tp_size": str(tp_size)})
        (tmp / INDEX).write_text(json.dumps({"tp_size": tp_size, "files": files}, indent=2) + "\n")
    return Path(destination)


def load_tensor_parallel_layout(path: Path) -> tuple[dict, RankFile] | None:
    """This rank's file of a layout at `path` (a format loader for `from_pretrained`), or None."""
    index_path = path / INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        size, files = int(index["tp_size"]), list(index["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path}: expected {{'tp_size': N, 'files': [...]}} ({err})") from None
    if len(files) != size:
        raise CheckpointError(f"{index_path}: tp_size is {size} but {len(files)} files are listed")
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world != size:
        raise ConfigError(f"{path}: this layout is split for {size} ranks; found {world} (launch with "
                          f"torchrun --nproc-per-node {size}, or convert the source again with --tp {world})")
    config = json.loads((path / "config.json").read_text())
    return config, RankFile(path / files[rank], size)

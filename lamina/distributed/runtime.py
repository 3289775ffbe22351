"""Process groups for the parallel plans: the `(ep, tp)` DeviceMesh, collectives under a timeout,
and agreement between ranks before any of them starts loading.

Under `torchrun` (or any launcher setting RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT) the
default process group is created on first use: NCCL when each rank has a GPU, gloo otherwise.
Every collective then runs under `LAMINA_DIST_TIMEOUT` seconds (default 300): a rank that dies or
never arrives turns into a `DistributedError` on the others instead of a hang.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..errors import CheckpointError, ConfigError, DistributedError, UnsupportedError

DEFAULT_TIMEOUT_S = 300.0


def timeout() -> timedelta:
    seconds = os.environ.get("LAMINA_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        return timedelta(seconds=float(seconds))
    except ValueError:
        raise ConfigError(f"LAMINA_DIST_TIMEOUT: expected a number of seconds, found {seconds!r}") from None


def ensure_process_group() -> None:
    """Join the default process group from the launcher's environment, unless already in one."""
    if dist.is_initialized():
        return
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UnsupportedError(
            f"tensor parallelism needs one process per rank: launch with `torchrun --nproc-per-node N` "
            f"(or call torch.distributed.init_process_group first); the environment lacks {', '.join(missing)}"
        )
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())


@dataclass(frozen=True)
class Groups:
    """The ranks one model is split over: `ep` ranks each hold a share of the experts, and within
    each, `tp` ranks split every layer's heads and rows."""

    mesh: DeviceMesh | None  # None: a plan computed offline (`layout.save_tensor_parallel`)
    tp: dist.ProcessGroup | None
    ep: dist.ProcessGroup | None  # None: every rank holds every expert
    tp_rank: int
    tp_size: int
    ep_rank: int
    ep_size: int

    @classmethod
    def offline(cls, tp_rank: int, tp_size: int) -> Groups:
        """One rank's place in a split, without processes: to cut a model's weights for it."""
        return cls(None, None, None, tp_rank, tp_size, 0, 1)

    @property
    def device(self) -> torch.device:
        if self.mesh.device_type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.mesh.device_type)


def make_groups(tp_size: int | None, ep_size: int | None, device_mesh: DeviceMesh | None) -> Groups:
    """An `(ep, tp)` mesh over the world (or the caller's mesh, whose dimensions are named "tp" and
    optionally "ep"). Sizes that do not multiply to the world size are refused on every rank."""
    if device_mesh is None:
        ensure_process_group()
        world = dist.get_world_size()
        ep = ep_size or 1
        tp = tp_size or world // ep
        for name, value in (("tp_size", tp), ("ep_size", ep)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive integer, found {value!r}")
        if tp * ep != world:
            raise ConfigError(f"tp_size × ep_size: expected the world size {world}, found {tp} × {ep} = {tp * ep}")
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        device_mesh = init_device_mesh(device_type, (ep, tp), mesh_dim_names=("ep", "tp"))
    names = device_mesh.mesh_dim_names or ()
    if "tp" not in names or not set(names) <= {"ep", "tp"}:
        raise ConfigError(f"device_mesh: expected dimensions named 'tp' and optionally 'ep', found {names}")
    if "ep" in names:
        ep_group, ep_rank, ep = device_mesh.get_group("ep"), device_mesh.get_local_rank("ep"), device_mesh.size(names.index("ep"))
    else:
        ep_group, ep_rank, ep = None, 0, 1
    return Groups(device_mesh, device_mesh.get_group("tp"), ep_group, device_mesh.get_local_rank("tp"),
                  device_mesh.size(names.index("tp")), ep_rank, ep)


def fingerprint(config: object, tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of what a rank is about to load: the config and every tensor's name and shape."""
    shape = getattr(tensors, "shape", None)
    entries = sorted((key, list(shape(key) if shape is not None else tensors[key].shape)) for key in tensors)
    to_dict = getattr(config, "to_dict", None)
    described = to_dict() if to_dict is not None else repr(config)
    text = json.dumps([described, entries], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def agree(what: str, value: str) -> None:
    """Check that every rank holds the same `value`; each rank raises the same error if not."""
    try:
        values: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
    except RuntimeError as err:  # gloo and NCCL report a missing peer as a RuntimeError
        reason = (str(err).strip().splitlines() or ["no reason given"])[0]
        raise DistributedError(
            f"{what}: rank {dist.get_rank()} waited for the other ranks and gave up ({reason}); "
            f"one of them failed or was not started (timeout {timeout().total_seconds():g} s)"
        ) from None
    if len(set(values)) > 1:
        by_value: dict[str, list[int]] = {}
        for rank, seen in enumerate(values):
            by_value.setdefault(str(seen), []).append(rank)
        groups = "; ".join(f"ranks {ranks}: {seen}" for seen, ranks in by_value.items())
        raise CheckpointError(f"{what}: the ranks disagree ({groups}); every rank must load the same model")

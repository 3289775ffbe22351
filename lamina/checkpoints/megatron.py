"""Reading Megatron-LM training checkpoints (GPT-2, BERT, Adept's Persimmon fork).

A Megatron checkpoint is one pickled `model_optim_rng.pt` per tensor-parallel rank, laid out as

    <dir>/model_optim_rng.pt                              one rank, no iteration folder
    <dir>/latest_checkpointed_iteration.txt               "release" or an iteration number
    <dir>/release/mp_rank_00/model_optim_rng.pt           (or iter_0001000/mp_rank_01/…)
    <dir>/release/mp_rank_00_001/model_optim_rng.pt       tensor rank 0 of pipeline stage 1
    <file>.zip                                            the NGC archive of such a tree

Each file holds `{"model": {"language_model": {...}, ...}, "checkpoint_version": v, "args":
Namespace(...)}`. `load_megatron_checkpoint` reads every rank through the restricted unpickler;
`MegatronCheckpoint.merged_tensors` flattens the nested model dict to dotted names and merges the
ranks, with the fused query/key/value rows put in one order whatever the checkpoint version.
Pipeline stages hold consecutive layers numbered from 0 in each stage (the first stage also the
embeddings, the last the final norm and heads): a tensor rank's stages are joined with their
layers renumbered in order before the tensor ranks are merged.

Fused QKV row orders (rows of `query_key_value`, per rank):

    version 0        [3, heads, head_dim]   "standard": all queries, all keys, all values
    version 1.0      [heads, head_dim, 3]
    version >= 2.0   [heads, 3, head_dim]   (Adept's Persimmon uses this too)
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import is_finite_number
from ..errors import CheckpointError
from .unpickle import load_pickled, load_pickled_bytes

CHECKPOINT_FILE = "model_optim_rng.pt"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
# mp_rank_XX (tensor parallel only) or mp_rank_XX_YYY (tensor XX, pipeline stage YYY); bounded, as
# int() refuses numbers of thousands of digits
_RANK_DIR = re.compile(r"mp_rank_(\d{1,9})(?:_(\d{1,9}))?$")
_ITERATION = re.compile(r"[0-9]{1,18}")
# what zipfile raises for a damaged archive (RuntimeError: an encrypted member; NotImplementedError:
# an unknown compression method; zlib.error: corrupt compressed data)
# ValueError: a member name that is not the UTF-8 its flag claims, a negative offset
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError, ValueError)
# Megatron's model dicts nest a few levels; deeper (or containing itself) is no checkpoint
_MAX_NESTING = 32


@dataclass
class MegatronCheckpoint:
    """The unpickled `model_optim_rng.pt` of every tensor-parallel rank, in rank order, and of
    every pipeline stage of each (`stages[rank]`, stage order; None: one stage)."""

    source: str
    ranks: list[dict[str, Any]]
    stages: list[list[dict[str, Any]]] | None = None

    @property
    def args(self) -> Any | None:
        """The training arguments (`argparse.Namespace`), absent from the oldest checkpoints."""
        return self.ranks[0].get("args")

    def arg(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default) if self.args is not None else default

    @property
    def checkpoint_version(self) -> float:
        version = self.ranks[0].get("checkpoint_version", 0.0)
        if not is_finite_number(version):
            raise CheckpointError(f"{self.source}: checkpoint_version: expected a number, found {version!r:.80}")
        return float(version)

    def rank_tensors(self, rank: int) -> dict[str, torch.Tensor]:
        """Rank `rank`'s model weights under dotted names (`language_model.embedding.…`)."""
        stages = self.stages[rank] if self.stages is not None else [self.ranks[rank]]
        flat = []
        for stage, state in enumerate(stages):
            model = state.get("model")
            if not isinstance(model, Mapping):
                raise CheckpointError(f"{self.source}: rank {rank} stage {stage} has no 'model' dict "
                                      f"(found keys {sorted(state)})")
            flat.append(flatten_tensors(model, where=self.source))
        return join_pipeline_stages(flat, f"{self.source} (tensor rank {rank})") if len(flat) > 1 else flat[0]

    def merged_tensors(
        self,
        num_heads: int,
        qkv_version: float | None = None,
        split_dims: Mapping[str, int | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """All ranks merged into whole tensors; fused QKV rows come out in the standard order.

        `qkv_version` overrides the stored checkpoint version for the QKV layout; `split_dims`
        adds `{name suffix: dim or None}` entries to the tensor-parallel table.
        """
        version = self.checkpoint_version if qkv_version is None else qkv_version
        return merge_tensor_parallel(
            [self.rank_tensors(r) for r in range(len(self.ranks))], num_heads, version, split_dims, self.source
        )


def load_megatron_checkpoint(path: str | os.PathLike) -> MegatronCheckpoint:
    """Read a Megatron checkpoint from a `.zip`, a `.pt` file or a checkpoint directory (see the
    module docstring for the layouts)."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            if not _is_torch_zip(path):
                return _load_zip(path)
        except _ZIP_ERRORS as err:
            raise CheckpointError(f"{path}: damaged zip archive ({type(err).__name__}: {err})") from None
    if path.is_file():
        return MegatronCheckpoint(str(path), [_as_state(load_pickled(path), str(path))])
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or directory")
    if (path / CHECKPOINT_FILE).is_file():
        return load_megatron_checkpoint(path / CHECKPOINT_FILE)
    folder = _iteration_folder(path)
    ranks = _rank_files({str(p.relative_to(folder)): p for p in folder.glob(f"*/{CHECKPOINT_FILE}")}, str(folder))
    return _checkpoint(str(folder), [[_as_state(load_pickled(p), str(p)) for p in stages] for stages in ranks])


def _checkpoint(source: str, stages: list[list[dict[str, Any]]]) -> MegatronCheckpoint:
    return MegatronCheckpoint(source, [rank[0] for rank in stages], stages if len(stages[0]) > 1 else None)


def _iteration_folder(path: Path) -> Path:
    tracker = path / TRACKER_FILE
    if tracker.is_file():
        text = tracker.read_text(encoding="utf-8", errors="replace").strip()
        name = "release" if text == "release" else f"iter_{int(text):07d}" if _ITERATION.fullmatch(text) else None
        if name is None:
            raise CheckpointError(f"{tracker}: expected 'release' or an iteration number, found {text!r:.80}")
        if not (path / name).is_dir():
            raise CheckpointError(f"{tracker}: names {name!r}, which is not a folder of {path}")
        return path / name
    if (path / "release").is_dir():
        return path / "release"
    iterations = sorted(path.glob("iter_*"))
    return iterations[-1] if iterations else path


def _rank_files(candidates: dict[str, Any], where: str) -> list[list[Any]]:
    """`{relative path: handle}` of the `mp_rank_XX[_YYY]/model_optim_rng.pt` files → for each
    tensor rank in order, its pipeline stages' handles in order."""
    by_rank: dict[tuple[int, int], Any] = {}
    for relative, handle in candidates.items():
        match = _RANK_DIR.match(Path(relative).parent.name)
        if match is None:
            continue
        by_rank[int(match.group(1)), int(match.group(2) or 0)] = handle
    if not by_rank:
        raise CheckpointError(f"{where}: no {CHECKPOINT_FILE} found (looked for mp_rank_XX/{CHECKPOINT_FILE})")
    tensor_ranks = 1 + max(tp for tp, _ in by_rank)
    stages = 1 + max(pp for _, pp in by_rank)
    expected = {(tp, pp) for tp in range(tensor_ranks) for pp in range(stages)}
    if set(by_rank) != expected:
        missing = sorted(expected - set(by_rank))[0]
        name = f"mp_rank_{missing[0]:02d}" + (f"_{missing[1]:03d}" if stages > 1 else "")
        raise CheckpointError(f"{where}: {tensor_ranks} tensor ranks × {stages} pipeline stages expected, "
                              f"{name} is missing")
    return [[by_rank[tp, pp] for pp in range(stages)] for tp in range(tensor_ranks)]


_LAYER = re.compile(r"(^|\.)layers\.(\d{1,9})\.")


def join_pipeline_stages(stages: Sequence[Mapping[str, torch.Tensor]], source: str) -> dict[str, torch.Tensor]:
    """One tensor rank's pipeline stages (flattened, in order) → one stage: each stage's layers,
    numbered from 0 there, follow the previous stages' layers."""
    joined: dict[str, torch.Tensor] = {}
    offset = 0
    for stage, tensors in enumerate(stages):
        local = {int(match.group(2)) for name in tensors for match in [_LAYER.search(name)] if match}
        if local and sorted(local) != list(range(len(local))):
            raise CheckpointError(f"{source}: pipeline stage {stage} holds layers {sorted(local)}, expected 0..{len(local) - 1}")
        for name, tensor in tensors.items():
            renamed = _LAYER.sub(lambda m: f"{m.group(1)}layers.{int(m.group(2)) + offset}.", name, count=1)
            if renamed in joined and joined[renamed].shape != tensor.shape:
                raise CheckpointError(f"{source}: key {renamed!r} is in two pipeline stages with shapes "
                                      f"{tuple(joined[renamed].shape)} and {tuple(tensor.shape)}")
            joined.setdefault(renamed, tensor)
        offset += len(local)
    return joined


def _load_zip(path: Path) -> MegatronCheckpoint:
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if Path(n).name == CHECKPOINT_FILE]
        if CHECKPOINT_FILE in members:
            names = [[CHECKPOINT_FILE]]
        else:
            # prefer the release folder when the archive holds several iterations
            folders = sorted({str(Path(n).parent.parent) for n in members})
            folder = next((f for f in folders if Path(f).name == "release"), folders[-1] if folders else "")
            names = _rank_files({n: n for n in members if str(Path(n).parent.parent) == folder}, str(path))
        return _checkpoint(str(path), [[_as_state(load_pickled_bytes(archive.read(n), f"{path}:{n}"), f"{path}:{n}")
                                        for n in stages] for stages in names])


def _is_torch_zip(path: Path) -> bool:
    """`torch.save` files are zip archives too; they hold a `*/data.pkl` record."""
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("data.pkl") for n in archive.namelist())


def _as_state(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict at the top of the checkpoint, found {type(obj).__name__}")
    return dict(obj)


def flatten_tensors(
    tree: Mapping[str, Any], prefix: str = "", where: str = "<checkpoint>", depth: int = 0
) -> dict[str, torch.Tensor]:
    """Nested dicts of tensors → `{dotted name: tensor}`; entries that are not tensors are dropped."""
    if depth == _MAX_NESTING:
        raise CheckpointError(f"{where}: the model dict nests deeper than {_MAX_NESTING} levels at {prefix[:200]!r}")
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tensors(value, name + ".", where, depth + 1))
        elif isinstance(value, torch.Tensor):
            flat[name] = value
    return flat


# -- the fused query/key/value rows ------------------------------------------------------------

# the checkpoint version whose fused rows are interleaved per head, (heads, 3, head_dim): Adept's
# Persimmon stores its query_key_value this way whatever version its file records
INTERLEAVED_QKV = 2.0


def _qkv_view(version: float, num_heads: int, head_dim: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(the row shape a version stores, the permutation that takes it to [3, heads, head_dim])."""
    if version < 1.0:
        return (3, num_heads, head_dim), (0, 1, 2)
    if version < 2.0:
        return (num_heads, head_dim, 3), (2, 0, 1)
    return (num_heads, 3, head_dim), (1, 0, 2)


def qkv_to_standard(tensor: torch.Tensor, version: float, num_heads: int) -> torch.Tensor:
    """Reorder a fused QKV weight `(3 * heads * head_dim, in)` or bias `(3 * heads * head_dim,)` from
    the row order of checkpoint `version` to [all q; all k; all v]."""
    head_dim = tensor.shape[0] // (3 * num_heads)
    shape, order = _qkv_view(version, num_heads, head_dim)
    rest = tuple(tensor.shape[1:])
    dims = (*order, *range(3, 3 + len(rest)))
    return tensor.reshape(*shape, *rest).permute(dims).reshape(tensor.shape)


def qkv_from_standard(tensor: torch.Tensor, version: float, num_heads: int) -> torch.Tensor:
    """The inverse of `qkv_to_standard`: [q; k; v] rows → the row order of checkpoint `version`."""
    head_dim = tensor.shape[0] // (3 * num_heads)
    shape, order = _qkv_view(version, num_heads, head_dim)
    inverse = tuple(order.index(i) for i in range(3))
    rest = tuple(tensor.shape[1:])
    standard = tensor.reshape(*(shape[i] for i in order), *rest)
    return standard.permute(*inverse, *range(3, 3 + len(rest))).reshape(tensor.shape)


# -- tensor parallelism ------------------------------------------------------------------------

# name suffix → the dim Megatron splits across tensor-parallel ranks (None: replicated). Column-
# parallel layers split their outputs (dim 0, biases too), row-parallel ones their inputs (dim 1).
SPLIT_DIMS: dict[str, int | None] = {
    "query_key_value.weight": 0,
    "query_key_value.bias": 0,
    "dense_h_to_4h.weight": 0,
    "dense_h_to_4h.bias": 0,
    "word_embeddings.weight": 0,
    "word_embeddings_for_head.weight": 0,
    "output_layer.weight": 0,
    "attention.dense.weight": 1,
    "dense_4h_to_h.weight": 1,
}


def tensor_parallel_dim(name: str, split_dims: Mapping[str, int | None] | None = None) -> int | None:
    """The dim along which `name` is split across ranks, or None when every rank holds it whole."""
    table = {**SPLIT_DIMS, **(split_dims or {})}
    for suffix in sorted(table, key=len, reverse=True):  # the most specific suffix wins
        if name.endswith(suffix):
            return table[suffix]
    return None


def merge_tensor_parallel(
    ranks: Sequence[Mapping[str, torch.Tensor]],
    num_heads: int,
    checkpoint_version: float,
    split_dims: Mapping[str, int | None] | None = None,
    source: str = "<checkpoint>",
) -> dict[str, torch.Tensor]:
    """Merge per-rank tensors (dotted names) into whole ones.

    `num_heads` counts the heads of all ranks together. Fused QKV tensors are put in standard
    [q; k; v] order rank by rank, then each of q, k and v is concatenated across ranks, so the
    result does not depend on the version's row order.
    """
    names = list(ranks[0])
    for rank, tensors in enumerate(ranks[1:], 1):
        if set(tensors) != set(names):
            odd = sorted(set(tensors) ^ set(names))[0]
            raise CheckpointError(f"{source}: tensor-parallel rank {rank} and rank 0 disagree on key {odd!r}")
    if num_heads % len(ranks):
        raise CheckpointError(f"{source}: {num_heads} attention heads do not divide over {len(ranks)} ranks")
    local_heads = num_heads // len(ranks)
    merged: dict[str, torch.Tensor] = {}
    for name in names:
        shards = [tensors[name] for tensors in ranks]
        dim = tensor_parallel_dim(name, split_dims)
        if name.endswith(("query_key_value.weight", "query_key_value.bias")):
            parts = [qkv_to_standard(s, checkpoint_version, local_heads).chunk(3, dim=0) for s in shards]
            merged[name] = torch.cat([torch.cat([p[i] for p in parts], dim=0) for i in range(3)], dim=0)
        elif dim is None or len(shards) == 1:
            _check_replicated(name, shards, source)
            merged[name] = shards[0]
        else:
            merged[name] = torch.cat(shards, dim=dim)
    return merged


def _check_replicated(name: str, shards: Sequence[torch.Tensor], source: str) -> None:
    for rank, shard in enumerate(shards[1:], 1):
        if shard.shape != shards[0].shape:
            raise CheckpointError(
                f"{source}: key {name!r} should be the same on every rank; rank {rank} has shape "
                f"{tuple(shard.shape)}, rank 0 {tuple(shards[0].shape)}"
            )


def save_converted(
    model_class: type,
    config: Any,
    tensors: Mapping[str, torch.Tensor],
    dst: str | os.PathLike,
    dtype: torch.dtype,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write converted checkpoint tensors (HF names) as an HF directory through `model_class`, so
    every key and shape is checked against the model and the files are what `save_pretrained` writes."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_checkpoint(tensors, dtype)
    model.save_pretrained(dst, max_shard_size=max_shard_size)
    return Path(dst)


def add_converter_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every `lamina convert-…` command for a Megatron-format checkpoint takes."""
    parser.add_argument("source", metavar="SRC", help="the checkpoint: a .zip, a model_optim_rng.pt, or its folder")
    parser.add_argument("destination", metavar="DST", help="the HF directory to write")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads, if the checkpoint does not say")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="dtype of the written weights (default: the checkpoint's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")

"""Reading and writing weight files: safetensors (single or sharded, mmap'd, zero-copy) and
`pytorch_model.bin` through `torch.load(weights_only=True)` only.

Every header, offset and dtype of an untrusted safetensors file is checked before a tensor is
made from it; errors name the file, the key, what was expected and what was found.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..config import is_integer
from ..errors import CheckpointError
from ..progress import ProgressBar

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# mapped safetensors files by id, for release_mapped_pages
_OPEN_FILES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# conversions copy this many bytes of a source at a time, releasing each block's pages after it
_BLOCK_BYTES = 4 << 20

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def release_mapped_pages(tensor: torch.Tensor) -> None:
    """Drop the memory pages under `tensor` where it views an open safetensors mapping (else do
    nothing): they count in the process's RSS while mapped. Only for tensors that nothing has
    written and whose reader is done with them: the pages come back from the file on a later read,
    so a view of them elsewhere (a tied embedding) still reads the file's values."""
    found = _mapping_of(tensor)
    if found is not None and hasattr(mmap, "MADV_DONTNEED"):
        file, offset, length = found
        page = offset // mmap.PAGESIZE * mmap.PAGESIZE
        file._map.madvise(mmap.MADV_DONTNEED, page, offset + length - page)


def is_mapped(tensor: torch.Tensor) -> bool:
    """Whether `tensor` views an open safetensors file's mapping (its bytes are read from disk on use)."""
    return _mapping_of(tensor) is not None


def _mapping_of(tensor: torch.Tensor) -> tuple[SafetensorsFile, int, int] | None:
    """The open file whose mapping holds all of `tensor`, its byte offset there and its length."""
    start, length = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    for file in list(_OPEN_FILES.values()):
        offset = start - file._base
        if file._map is not None and 0 <= offset and offset + length <= len(file._map) and length:
            return file, offset, length
    return None


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A checkpoint tensor for a parameter of `dtype` (None: as stored): floating tensors are
    `converted`, others (ids, masks) kept."""
    return converted(tensor, dtype) if dtype is not None and tensor.is_floating_point() else tensor


def converted(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` (itself when already so). The copy is made a block at a time and the
    file pages under each block are released once it is copied (where `tensor` views a checkpoint
    file's mapping): a conversion peaks at the copy plus one block, not the copy plus the source."""
    return tensor if tensor.dtype == dtype else owned_copy(tensor, dtype)


def owned_copy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous copy of `tensor` (in `dtype`), made a block at a time, the file pages under each
    block released once it is copied: the copy peaks at itself plus one block of the file."""
    if not tensor.is_contiguous():
        out = tensor.to(dtype or tensor.dtype, memory_format=torch.contiguous_format, copy=True)
        release_mapped_pages(tensor)
        return out
    out = torch.empty(tensor.shape, dtype=dtype or tensor.dtype, device=tensor.device)
    source, target = tensor.view(-1), out.view(-1)
    step = max(1, _BLOCK_BYTES // tensor.element_size())
    for start in range(0, source.numel(), step):
        target[start : start + step].copy_(source[start : start + step])
        release_mapped_pages(source[start : start + step])
    return out


def release_loaded(tensor: torch.Tensor) -> None:
    """A loader is done with `tensor` (quantized from it, say): drop its mapped pages
    (`release_mapped_pages`) and hand the allocator's freed blocks back to the system. glibc keeps
    large freed blocks once it has raised its mmap threshold, so a large layer quantized in blocks
    would otherwise leave its temporaries resident."""
    release_mapped_pages(tensor)
    trim_allocator()


def trim_allocator() -> None:
    """Hand the C allocator's free pages back to the system (glibc keeps them otherwise: a load's
    temporaries, interleaved with the tensors it keeps, leave holes that stay resident)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


_LIBC = _glibc()


class SafetensorsFile(Mapping[str, torch.Tensor]):
    """A safetensors file opened with mmap; indexing returns a tensor viewing the mapped pages.

    The mapping is private copy-on-write, so tensors are writable without touching the file and
    pages are read from disk only when used.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, no header length)")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > min(_MAX_HEADER_BYTES, size - 8):
                    raise CheckpointError(
                        f"{self.path}: truncated or corrupt safetensors file (header of {header_len} bytes "
                        f"declared, file has {size} bytes)"
                    )
                header_bytes = handle.read(header_len)
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
            if self._map is not None:
                self._base = torch.frombuffer(self._map, dtype=torch.uint8, count=1).data_ptr()
                _OPEN_FILES[id(self)] = self
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot read ({err.strerror})") from None
        try:
            header = json.loads(header_bytes)
        # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
        except (ValueError, RecursionError) as err:
            raise CheckpointError(f"{self.path}: safetensors header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            self._entries[key] = self._check_entry(key, info, data_len)
        self._check_disjoint()

    def _check_entry(self, key: str, info: object, data_len: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {key!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(f"{where}: expected dtype, shape and data_offsets in the header, found {info!r}")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise CheckpointError(
                f"{where}: unsupported dtype {info['dtype']!r:.80}, expected one of {list(_SAFETENSORS_DTYPES)}"
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(is_integer(d) and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: malformed shape {shape!r:.80}, expected a list of integers >= 0")
        # torch sizes are int64, and it multiplies a shape's sizes before seeing a zero among them
        if math.prod(max(d, 1) for d in shape) >= 2**63:
            raise CheckpointError(f"{where}: shape {shape} has more elements than a tensor can hold")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_integer(o) for o in offsets)):
            raise CheckpointError(f"{where}: malformed data_offsets {offsets!r:.80}, expected [begin, end]")
        begin, end = offsets
        numel = 1
        for dim in shape:
            numel *= dim
        expected = numel * dtype.itemsize
        if end - begin != expected or begin < 0:
            raise CheckpointError(f"{where}: shape {shape} of {info['dtype']} needs {expected} bytes, offsets give {end - begin}")
        if end > data_len:
            raise CheckpointError(
                f"{where}: data ends at byte {end} but the file holds {data_len} bytes of data (truncated file?)"
            )
        return dtype, tuple(shape), begin, end

    def _check_disjoint(self) -> None:
        """Two tensors over the same bytes would alias: writing one would change the other."""
        spans = sorted((begin, end, key) for key, (_, _, begin, end) in self._entries.items() if begin != end)
        for (_, end, before), (begin, _, key) in zip(spans, spans[1:]):
            if begin < end:
                raise CheckpointError(
                    f"{self.path}: tensor {key!r}: data starts at byte {begin}, inside tensor {before!r} (which ends at {end})"
                )

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[key]
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=self._data_start + begin)
        return flat.view(shape)

    def release(self, key: str) -> None:
        """Drop the memory pages that reading `key` brought in, once a copy of it is all that is
        kept (converted or merged): they count in the process's RSS while mapped. The mapping is
        never written, so a later read only pages them in again from the file."""
        _, _, begin, end = self._entries[key]
        if self._map is None or begin == end or not hasattr(self._map, "madvise"):
            return
        page = mmap.PAGESIZE
        start = (self._data_start + begin) // page * page
        self._map.madvise(mmap.MADV_DONTNEED, start, self._data_start + end - start)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class CheckpointReader(Mapping[str, torch.Tensor]):
    """All tensors of a checkpoint (one file or a sharded set) by name, read lazily.

    `source(key)` names the file a key came from, for error messages.
    """

    def __init__(self, files: dict[str, Mapping[str, torch.Tensor]], key_to_file: dict[str, str]) -> None:
        self._files = files
        self._key_to_file = key_to_file

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._files[self._key_to_file[key]][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_to_file)

    def __len__(self) -> int:
        return len(self._key_to_file)

    def source(self, key: str) -> str:
        return self._key_to_file.get(key, "<checkpoint>")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, … for bad files
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch file ({torch_load_reason(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors by name, found {type(state).__name__}")
    for key, value in state.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise CheckpointError(
                f"{path}: expected a dict of tensors by name, found key {key!r:.80} holding a {type(value).__name__}"
            )
    return state


def torch_load_reason(err: BaseException) -> str:
    """What a failed `torch.load` found, in one line: for a refused pickle the weights-only
    unpickler's own reason, not torch's banner advising `weights_only=False`."""
    text = str(err)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail if marker else text).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a valid shard index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: weight_map must be an object")
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} must be a plain file name in the same directory")
    return weight_map


def open_checkpoint(directory: str | os.PathLike) -> CheckpointReader:
    """Open the weights in a model directory, preferring safetensors over pickled files."""
    directory = Path(directory)
    opener: Callable[[Path], Mapping[str, torch.Tensor]]
    for single, index, opener in (
        (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SafetensorsFile),
        (WEIGHTS_NAME, WEIGHTS_INDEX_NAME, _load_bin),
    ):
        if (directory / index).is_file():
            weight_map = _read_index(directory / index)
            files = {}
            for shard in sorted(set(weight_map.values())):
                if not _is_file(directory / shard):
                    raise CheckpointError(f"{directory / index}: lists shard {shard!r:.120}, which is missing")
                files[str(directory / shard)] = opener(directory / shard)
            key_to_file = {}
            for key, shard in weight_map.items():
                file_name = str(directory / shard)
                if key not in files[file_name]:
                    raise CheckpointError(f"{directory / index}: key {key!r} is mapped to {shard}, which lacks it")
                key_to_file[key] = file_name
            return CheckpointReader(files, key_to_file)
        if (directory / single).is_file():
            handle = opener(directory / single)
            return CheckpointReader({str(directory / single): handle}, {k: str(directory / single) for k in handle})
    raise CheckpointError(
        f"{directory}: no weights found (looked for {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
        f"{WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME})"
    )


def _is_file(path: Path) -> bool:
    """`Path.is_file`, false also for names the system refuses (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def parse_size(size: int | str) -> int:
    """`"5GB"`, `"200MB"`, `"10KiB"` or a byte count → bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise CheckpointError(f"max_shard_size: expected bytes or a size like '5GB', found {size!r}")


def write_weights(
    state: dict[str, torch.Tensor],
    directory: Path,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
) -> None:
    """Write `state` as one file or as shards with an index, in HF's naming."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor.detach().to("cpu").contiguous()
        shard_bytes += nbytes
    single, index_name = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if safe_serialization else (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        if safe_serialization:
            save_file(_unshare(tensors), str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name)

    stem, ext = single.rsplit(".", 1)
    count = len(shards)
    names = [single] if count == 1 else [f"{stem}-{number:05d}-of-{count:05d}.{ext}" for number in range(1, count + 1)]
    weight_map = {}
    with ProgressBar(len(state), "Writing the weights", "tensors") as writing:
        for name, shard in zip(names, shards):
            save(shard, name)
            weight_map.update(dict.fromkeys(shard, name))
            writing.advance(len(shard), sum(t.numel() * t.element_size() for t in shard.values()))
    if len(shards) == 1:
        return
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage; give each its own."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


class atomic_directory:
    """Write into a temporary sibling directory, then move the files into place on success.

    A failure part-way leaves the destination as it was: no half-written model directory.
    """

    def __init__(self, destination: str | os.PathLike) -> None:
        self.destination = Path(destination)

    def __enter__(self) -> Path:
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=self.destination.parent))
        return self._tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        self.destination.mkdir(parents=True, exist_ok=True)
        # drop stale weight files of an earlier save so an old shard cannot shadow the new set
        for old in self.destination.iterdir():
            if old.name.startswith(("model-", "pytorch_model-")) or old.name in (
                SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
            ):
                old.unlink()
        umask = os.umask(0)
        os.umask(umask)
        for item in self._tmp.iterdir():
            os.chmod(item, 0o666 & ~umask)  # as a plain open() would have made them, not mkdtemp's 0600
            os.replace(item, self.destination / item.name)
        self._tmp.rmdir()

"""GGUF files (llama.cpp) of the llama and mistral architectures (Mixtral included: a llama with
experts), read as HF checkpoints.

`load_gguf(path)` answers `(HF config dict, tensors under HF names)`: the config is built from the
`{arch}.*` metadata, the tensors are renamed from llama.cpp's names and dequantized when the model
asks for them, a few rows at a time straight into the dtype it loads in (float types and Q8_0 /
Q4_0 / Q4_1 here, k-quants by the `gguf` package), each step's bytes read from the file (only the
header is read through a mapping). llama.cpp stores q/k projections permuted for
its interleaved-pair rotary; lamina rotates halves, as transformers does, so the permutation is
undone here. The tokenizer and chat template come from the same file (`lamina.tokenizers`).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import is_finite_number, is_integer
from ..errors import CheckpointError, UnsupportedError
from .interleaved import InterleavedRotaryTensors
from .io import trim_allocator

GGUF_MAGIC = b"GGUF"
# type id → (name, values a block, bytes a block) for the types lamina reads: ggml's table, as the
# gguf package has it (tested against it); the package is imported only for other types and for
# the k-quant dequantizers, as importing it costs tens of MB of resident memory
_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
}
SUPPORTED_TYPES = tuple(name for name, _, _ in _TYPES.values())
ARCHITECTURES = {"llama": "llama", "mistral": "mistral"}

# llama.cpp tensor name → HF name ({i}: layer index)
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "block_sparse_moe.gate.weight",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")
# stacked experts `(experts, out, in)` → Mixtral's per-expert weights
_EXPERT_NAMES = {"ffn_gate_exps.weight": "w1", "ffn_down_exps.weight": "w2", "ffn_up_exps.weight": "w3"}
# precomputed rotary frequencies that some files carry; lamina computes its own
_SKIPPED = {"rope_freqs.weight"}


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as file:
        return file.read(4) == GGUF_MAGIC


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (outermost first)
    type_name: str
    type_id: int
    offset: int  # absolute, in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF header: metadata values (arrays as lists) and tensor locations."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def rows(self, info: TensorInfo) -> _StoredRows:
        """The stored bytes of a tensor, `(rows, bytes per row)`, read from the file a slice of rows
        at a time (only the header is parsed through a mapping: a file fresh in the page cache maps
        in large folios, which stayed resident however their ranges were released)."""
        return _StoredRows(self.path, info)


def _rows(info: TensorInfo) -> int:
    return math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1


class _StoredRows:
    """`(rows, bytes per row)` of a tensor in a file; slicing rows reads them (`os.pread`)."""

    def __init__(self, path: Path, info: TensorInfo) -> None:
        self.path, self.info = path, info
        self.shape = (_rows(info), info.nbytes // _rows(info))

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        block = np.empty((max(0, stop - start), self.shape[1]), dtype=np.uint8)
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            view, offset = memoryview(block).cast("B"), self.info.offset + start * self.shape[1]
            while view.nbytes:
                count = os.preadv(descriptor, [view], offset)
                if count == 0:
                    raise CheckpointError(f"{self.path}: tensor {self.info.name!r} ends past the end of the file")
                view, offset = view[count:], offset + count
        finally:
            os.close(descriptor)
        return block


# metadata value type id → struct format (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# arrays of arrays nest no deeper than this (llama.cpp reads none): a deeper file would exhaust the
# recursion of `_Cursor.value`
_MAX_ARRAY_NESTING = 8
# GGUF alignment when `general.alignment` is absent
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, data: memoryview, where: str) -> None:
        self.data, self.position, self.where = data, 0, where

    def take(self, size: int) -> memoryview:
        if size < 0 or self.position + size > len(self.data):
            raise CheckpointError(f"{self.where}: truncated GGUF header (needed {size} bytes at offset {self.position})")
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("Q"))
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            return str(raw, "utf-8", errors="replace")

    def value(self, type_id: int, depth: int = 0) -> Any:
        if type_id in _SCALARS:
            return self.scalar(_SCALARS[type_id])
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            if depth == _MAX_ARRAY_NESTING:
                raise CheckpointError(
                    f"{self.where}: GGUF arrays nested more than {_MAX_ARRAY_NESTING} deep at offset {self.position}"
                )
            item_type, count = self.scalar("I"), self.scalar("Q")
            if count > len(self.data) - self.position:
                raise CheckpointError(f"{self.where}: GGUF array of {count} items runs past the end of the file")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                return list(struct.unpack(f"<{count}{fmt}", self.take(count * struct.calcsize(fmt))))
            return [self.value(item_type, depth + 1) for _ in range(count)]
        raise CheckpointError(f"{self.where}: unknown GGUF metadata value type {type_id} at offset {self.position}")


def _tensor_type(type_id: int, name: str, where: str) -> tuple[str, int, int]:
    """(name, values a block, bytes a block) of a GGUF tensor type id."""
    if type_id in _TYPES:
        return _TYPES[type_id]
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        kind = GGMLQuantizationType(type_id)
    except ValueError:
        raise CheckpointError(f"{where}: tensor {name!r} has unknown GGUF type id {type_id}") from None
    return (kind.name, *GGML_QUANT_SIZES[kind])


@functools.lru_cache(maxsize=4)
def _read_cached(path: Path, mtime_ns: int, size: int) -> GGUFFile:
    where = str(path)
    with open(path, "rb") as file:
        try:
            data = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
        except ValueError:
            raise CheckpointError(f"{where}: empty file, not a GGUF model") from None
    cursor = _Cursor(data, where)
    if bytes(cursor.take(4)) != GGUF_MAGIC:
        raise CheckpointError(f"{where}: not a GGUF file (the first bytes are not 'GGUF')")
    version = cursor.scalar("I")
    if version not in (2, 3):
        raise CheckpointError(f"{where}: GGUF version {version} is not supported (expected 2 or 3, little-endian)")
    tensor_count, kv_count = cursor.scalar("Q"), cursor.scalar("Q")
    values: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        # llama.cpp refuses repeated keys and names; two readers must not see different values
        if key in values:
            raise CheckpointError(f"{where}: GGUF metadata key {key!r} appears twice")
        values[key] = cursor.value(cursor.scalar("I"))
    infos = {}
    for _ in range(tensor_count):
        name = cursor.string()
        if name in infos:
            raise CheckpointError(f"{where}: GGUF tensor {name!r} appears twice")
        dims = [cursor.scalar("Q") for _ in range(cursor.scalar("I"))]
        type_id, offset = cursor.scalar("I"), cursor.scalar("Q")
        infos[name] = (dims, type_id, offset)
    alignment = values.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not is_integer(alignment) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(
            f"{where}: GGUF metadata key 'general.alignment': expected a positive power of two, found {alignment!r:.80}"
        )
    start = -(-cursor.position // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, (dims, type_id, offset) in infos.items():
        type_name, block, block_bytes = _tensor_type(type_id, name, where)
        # no llama tensor is empty; an empty one would hide absurd sizes (zero times 2**63 fits in
        # any file) that readers divide by and count experts over
        if 0 in dims:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {dims}, expected sizes of at least 1")
        elements = math.prod(dims)
        nbytes = elements // block * block_bytes
        if start + offset + nbytes > len(data) or (dims and dims[0] % block):
            raise CheckpointError(f"{where}: tensor {name!r} ({type_name}, shape {dims}) does not fit in the file")
        tensors[name] = TensorInfo(name, tuple(reversed(dims)), type_name, type_id, start + offset, nbytes)
    return GGUFFile(path, values, tensors)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header (metadata + tensor table); tensor data stays mapped, unread.
    Parsed headers are cached per file (path, mtime, size)."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read GGUF file ({err.strerror})") from None
    return _read_cached(path, stat.st_mtime_ns, stat.st_size)


def hf_config(values: dict[str, Any], tensor_names: set[str], where: str, vocab_size: int | None) -> dict[str, Any]:
    """The HF `config.json` of a GGUF's metadata (`vocab_size`: the tokenizer's or the embedding's
    row count, for files whose metadata lacks it)."""
    arch = values.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise UnsupportedError(f"{where}: GGUF architecture {arch!r:.80} is not supported (lamina reads {sorted(ARCHITECTURES)})")

    def get(key: str, default: Any = None, required: bool = True) -> Any:
        value = values.get(f"{arch}.{key}", default)
        if value is None and required:
            raise CheckpointError(f"{where}: GGUF metadata key '{arch}.{key}' is missing")
        return value

    def checked(key: str, value: Any, ok: bool, expected: str) -> Any:
        if not ok:
            raise CheckpointError(f"{where}: GGUF metadata key {key!r}: expected {expected}, found {value!r:.80}")
        return value

    def count(key: str, default: Any = None, required: bool = True) -> int | None:
        """A size or count: a positive integer (None when absent and not required)."""
        value = get(key, default, required)
        positive = is_integer(value) and value > 0
        return value if value is None else checked(f"{arch}.{key}", value, positive, "a positive integer")

    def number(key: str, default: float | None = None) -> float:
        value = get(key, default)
        return float(checked(f"{arch}.{key}", value, is_finite_number(value), "a finite number"))

    def token_id(key: str) -> int | None:
        value = values.get(f"tokenizer.ggml.{key}")
        valid = is_integer(value) and value >= 0
        return value if value is None else checked(f"tokenizer.ggml.{key}", value, valid, "a token id (an integer >= 0)")

    scaling = get("rope.scaling.type", "none", required=False)
    if scaling not in ("none", None):
        raise UnsupportedError(f"{where}: GGUF rope scaling {scaling!r:.80} is not supported (expected none)")
    layers, hidden, heads = count("block_count"), count("embedding_length"), count("attention.head_count")
    config: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "architectures": ["MistralForCausalLM" if arch == "mistral" else "LlamaForCausalLM"],
        "vocab_size": count("vocab_size", vocab_size),
        "hidden_size": hidden,
        "intermediate_size": count("feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": count("attention.head_count_kv", heads),
        "head_dim": count("attention.key_length", hidden // heads),
        "max_position_embeddings": count("context_length"),
        "rms_norm_eps": number("attention.layer_norm_rms_epsilon"),
        "rope_theta": number("rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "dtype": "float32",
    }
    if arch == "mistral":
        config["sliding_window"] = count("attention.sliding_window", required=False)
    experts = count("expert_count", required=False)
    if experts:
        # llama.cpp stores Mixtral as a llama (or mistral) model with experts
        config.update(model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=experts,
                      num_experts_per_tok=count("expert_used_count"))
        config.setdefault("sliding_window", None)
    # the model is built with this many layers before any tensor is read
    stored_layers = len({match.group(1) for match in map(_LAYER_PATTERN.fullmatch, tensor_names) if match})
    if layers > stored_layers:
        raise CheckpointError(f"{where}: GGUF metadata key '{arch}.block_count' is {layers}, but the file holds "
                              f"the tensors of {stored_layers} layers")
    return config


def hf_names(info: TensorInfo, where: str) -> dict[str, int | None]:
    """HF name → expert index (None: the whole tensor) for one GGUF tensor."""
    if info.name in _GLOBAL_NAMES:
        return {_GLOBAL_NAMES[info.name]: None}
    match = _LAYER_PATTERN.fullmatch(info.name)
    if match and match.group(2) in _LAYER_NAMES:
        return {f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}": None}
    if match and match.group(2) in _EXPERT_NAMES:
        prefix = f"model.layers.{match.group(1)}.block_sparse_moe.experts."
        return {f"{prefix}{e}.{_EXPERT_NAMES[match.group(2)]}.weight": e for e in range(info.shape[0])}
    raise CheckpointError(f"{where}: unexpected GGUF tensor {info.name!r} (not part of a llama/mistral model)")


def _block_dequantize(raw: np.ndarray, type_name: str) -> torch.Tensor:
    """Q8_0 / Q4_0 / Q4_1 in torch (several times faster than the reference numpy code). A block
    holds 32 weights: an fp16 scale d (Q4_1: then an fp16 minimum m), then the quants; 4-bit
    blocks keep weights 0-15 in the low nibbles and 16-31 in the high ones."""
    header = 4 if type_name == "Q4_1" else 2
    blocks = torch.from_numpy(raw.copy()).view(-1, _BLOCK_BYTES[type_name])
    scale = blocks[:, :2].contiguous().view(torch.float16).float()
    quants = blocks[:, header:]
    if type_name == "Q8_0":
        return quants.view(torch.int8).float() * scale
    values = torch.cat((quants & 0x0F, quants >> 4), dim=1).float()
    if type_name == "Q4_0":
        return (values - 8) * scale
    return values * scale + blocks[:, 2:4].contiguous().view(torch.float16).float()


_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# float32 values a dequantizing step produces at most (its temporaries are a few times that)
_STEP_VALUES = 1 << 20


def _dequantize_rows(raw: np.ndarray, info: TensorInfo) -> torch.Tensor:
    """Stored rows `(rows, bytes per row)` → float32 `(rows, values per row)`."""
    if info.type_name in _BLOCK_BYTES:
        return _block_dequantize(raw, info.type_name).reshape(raw.shape[0], -1)
    if info.type_name in _FLOAT_TYPES:
        return torch.from_numpy(raw.copy()).view(_FLOAT_TYPES[info.type_name]).float()
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as reference_dequantize

    array = reference_dequantize(raw, GGMLQuantizationType(info.type_id))
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=not array.flags.writeable)).reshape(raw.shape[0], -1)


def dequantize(raw: np.ndarray | _StoredRows, info: TensorInfo, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor's stored bytes `(rows, bytes per row)` (an array, or `GGUFFile.rows`) → its values in
    `dtype`, `(rows, values per row)`. A few rows at a time: the float32 temporaries stay small
    whatever the tensor's size, and a bf16 load never holds float32 copies."""
    rows = raw.shape[0]
    out = torch.empty(rows, math.prod(info.shape) // rows if rows else 0, dtype=dtype)
    step = max(1, _STEP_VALUES // max(1, out.shape[1]))
    for start in range(0, rows, step):
        out[start : start + step] = _dequantize_rows(raw[start : start + step], info)
    trim_allocator()
    return out


def gguf_tensors(file: GGUFFile, config: dict[str, Any]) -> InterleavedRotaryTensors:
    """The tensors of a GGUF file under HF names, dequantized one at a time on access (to float32,
    or to the dtype the loader asks for)."""
    where = str(file.path)
    sources: dict[str, tuple[TensorInfo, int | None]] = {}
    for info in file.tensors.values():
        if info.name in _SKIPPED:
            continue
        if info.type_name not in SUPPORTED_TYPES:
            raise UnsupportedError(
                f"{where}: tensor {info.name!r} has GGUF type {info.type_name}, expected one of {', '.join(SUPPORTED_TYPES)}"
            )
        sources.update({name: (info, expert) for name, expert in hf_names(info, where).items()})

    def whole(info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(file.rows(info), info, dtype).reshape(info.shape)

    # the experts of a stacked tensor are asked for one by one, interleaved with the other two
    stacked = functools.lru_cache(maxsize=3)(whole)

    def read(source: tuple[TensorInfo, int | None], dtype: torch.dtype | None) -> torch.Tensor:
        info, expert = source
        dtype = dtype or torch.float32
        return whole(info, dtype) if expert is None else stacked(info, dtype)[expert]

    return InterleavedRotaryTensors(sources, read, config, where)


def load_gguf(path: Path) -> tuple[dict[str, Any], Mapping[str, torch.Tensor]] | None:
    """FORMAT_LOADERS entry: a GGUF file → (HF config dict, lazily dequantized HF-named tensors)."""
    path = Path(path)
    if not is_gguf(path):
        return None
    file = read_gguf(path)
    tokens = file.metadata.get("tokenizer.ggml.tokens")
    embedding = file.tensors.get("token_embd.weight")
    # a malformed token list is the tokenizer loader's to report; the embedding still sizes the model
    vocab_size = len(tokens) if isinstance(tokens, list) and tokens else embedding.shape[0] if embedding is not None else None
    config = hf_config(file.metadata, set(file.tensors), str(path), vocab_size)
    return config, gguf_tensors(file, config)

"""Malformed checkpoint and config files: each gets a lamina error naming the file and the key, what
was expected and what was found, never a bare Python exception or a hang."""

from __future__ import annotations

import argparse
import json
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lamina
from lamina.checkpoints.gguf import read_gguf
from lamina.checkpoints.io import SafetensorsFile, open_checkpoint
from lamina.checkpoints.megatron import load_megatron_checkpoint
from lamina.checkpoints.unpickle import load_pickled_bytes
from lamina.errors import CheckpointError, ConfigError, UnsupportedError

DEEP_JSON = "[" * 100_000 + "]" * 100_000
# an integer of more digits than Python's int() accepts from text
LONG_INT = "9" * 5000


# -- GGUF, written byte by byte --------------------------------------------------------------------

_U32, _F32, _STR, _ARR = 4, 6, 8, 9


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, type_id: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", type_id) + payload


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _gguf(metadata: list[bytes], tensors: list[tuple[str, list[int], int]] = (), data: bytes = b"") -> bytes:
    """A GGUF v3 file: metadata entries (`_kv`), tensors `(name, dims, type id)` at offset 0, data."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + b"".join(metadata)
    for name, dims, type_id in tensors:
        out += _string(name) + _u32(len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, 0)
    return out + b"\0" * (-len(out) % 32) + data


LLAMA = [
    _kv("general.architecture", _STR, _string("llama")), _kv("llama.block_count", _U32, _u32(1)),
    _kv("llama.context_length", _U32, _u32(16)), _kv("llama.embedding_length", _U32, _u32(8)),
    _kv("llama.feed_forward_length", _U32, _u32(16)), _kv("llama.attention.head_count", _U32, _u32(2)),
    _kv("llama.attention.layer_norm_rms_epsilon", _F32, struct.pack("<f", 1e-5)), _kv("llama.vocab_size", _U32, _u32(4)),
]
# one F32 norm weight of layer 0, so the metadata's layer count is backed by tensors
NORM = [("blk.0.attn_norm.weight", [8], 0)]


def _replaced(key: str, type_id: int, payload: bytes) -> list[bytes]:
    return [entry for entry in LLAMA if not entry.startswith(_string(key))] + [_kv(key, type_id, payload)]


@pytest.mark.parametrize("payload, type_id, found", [
    (_u32(0), _U32, "found 0"),  # divided by before
    (struct.pack("<i", -32), 5, "found -32"),
    (_u32(48), _U32, "found 48"),
    (_string("x"), _STR, "found 'x'"),
    (_u32(_U32) + struct.pack("<Q", 1) + _u32(32), _ARR, r"found \[32\]"),
])
def test_gguf_alignment_must_be_a_power_of_two(tmp_path, payload, type_id, found):
    path = tmp_path / "align.gguf"
    path.write_bytes(_gguf(LLAMA + [_kv("general.alignment", type_id, payload)]))
    with pytest.raises(CheckpointError, match=rf"align\.gguf: GGUF metadata key 'general.alignment': expected a positive power of two, {found}"):
        read_gguf(path)


@pytest.mark.parametrize("dims", [[8, 0], [0, 8], [2**63, 2**63, 0]])
def test_gguf_tensor_with_a_zero_size_names_the_tensor(tmp_path, dims):
    path = tmp_path / "empty.gguf"
    path.write_bytes(_gguf(LLAMA, NORM + [("output_norm.weight", dims, 0)], b"\0" * 64))
    with pytest.raises(CheckpointError, match=r"empty\.gguf: tensor 'output_norm.weight' has shape .*expected sizes of at least 1"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


def test_gguf_deeply_nested_arrays_are_refused(tmp_path):
    path = tmp_path / "nested.gguf"
    nested = (_u32(_ARR) + struct.pack("<Q", 1)) * 20_000 + _u32(_U32) + struct.pack("<Q", 0)
    path.write_bytes(_gguf(LLAMA + [_kv("nested", _ARR, nested)]))
    with pytest.raises(CheckpointError, match=r"nested\.gguf: GGUF arrays nested more than 8 deep"):
        read_gguf(path)


def test_gguf_repeated_key_or_tensor_is_refused(tmp_path):
    path = tmp_path / "twice.gguf"
    path.write_bytes(_gguf(LLAMA + [LLAMA[1]]))
    with pytest.raises(CheckpointError, match=r"twice\.gguf: GGUF metadata key 'llama.block_count' appears twice"):
        read_gguf(path)
    path.write_bytes(_gguf(LLAMA, NORM + NORM, b"\0" * 32))
    with pytest.raises(CheckpointError, match=r"twice\.gguf: GGUF tensor 'blk.0.attn_norm.weight' appears twice"):
        read_gguf(path)


@pytest.mark.parametrize("key, type_id, payload, expected, found", [
    ("llama.embedding_length", _STR, _string("abc"), "a positive integer", "'abc'"),
    ("llama.embedding_length", _ARR, _u32(_U32) + struct.pack("<Q", 1) + _u32(3), "a positive integer", r"\[3\]"),
    ("llama.embedding_length", _F32, struct.pack("<f", float("inf")), "a positive integer", "inf"),
    ("llama.attention.head_count", _U32, _u32(0), "a positive integer", "0"),  # hidden // heads
    ("llama.attention.layer_norm_rms_epsilon", _STR, _string("x"), "a finite number", "'x'"),
    ("llama.expert_count", _STR, _string("x"), "a positive integer", "'x'"),
    ("tokenizer.ggml.bos_token_id", _STR, _string("x"), r"a token id \(an integer >= 0\)", "'x'"),
])
def test_gguf_metadata_of_the_wrong_type_names_the_key(tmp_path, key, type_id, payload, expected, found):
    path = tmp_path / "typed.gguf"
    path.write_bytes(_gguf(_replaced(key, type_id, payload), NORM, b"\0" * 32))
    with pytest.raises(CheckpointError, match=rf"typed\.gguf: GGUF metadata key '{key}': expected {expected}, found {found}"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


def test_gguf_architecture_that_is_not_a_string(tmp_path):
    path = tmp_path / "arch.gguf"
    path.write_bytes(_gguf(_replaced("general.architecture", _ARR, _u32(_U32) + struct.pack("<Q", 1) + _u32(3))))
    with pytest.raises(UnsupportedError, match=r"arch\.gguf: GGUF architecture \[3\] is not supported"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


def test_gguf_block_count_beyond_the_stored_layers_is_refused_before_building(tmp_path):
    path = tmp_path / "layers.gguf"  # 2**40 layers would take the model's constructor forever
    path.write_bytes(_gguf(_replaced("llama.block_count", 10, struct.pack("<Q", 2**40)), NORM, b"\0" * 32))
    with pytest.raises(CheckpointError, match=r"layers\.gguf: GGUF metadata key 'llama.block_count' is 1099511627776, but the file holds the tensors of 1 layers"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


# -- safetensors headers and shard indexes ---------------------------------------------------------


def _safetensors(path: Path, header: str | dict, data: bytes = b"") -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header, message", [
    (DEEP_JSON, "safetensors header is not valid JSON"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + LONG_INT + "]}}", "safetensors header is not valid JSON"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, r"tensor 'a': unsupported dtype \['F32'\]"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, r"tensor 'a': malformed shape \[True\]"),
    ({"a": {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}}, "tensor 'a': shape .* more elements than a tensor can hold"),
    ({"a": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}, "tensor 'a': shape .* more elements than a tensor can hold"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
     r"tensor 'b': data starts at byte 0, inside tensor 'a' \(which ends at 4\)"),
])
def test_malformed_safetensors_header_names_file_and_tensor(tmp_path, header, message):
    path = _safetensors(tmp_path / "bad.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors: {message}"):
        SafetensorsFile(path)


@pytest.mark.parametrize("index", [DEEP_JSON.encode(), b"\xff\xfe", ('{"weight_map": ' + LONG_INT + "}").encode()])
def test_unreadable_shard_index_names_the_index(tmp_path, index):
    (tmp_path / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: not a valid shard index"):
        open_checkpoint(tmp_path)


def test_shard_index_naming_an_impossible_file(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "x" * 5000}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: lists shard 'xxxx.*, which is missing"):
        open_checkpoint(tmp_path)


def test_pytorch_bin_must_map_names_to_tensors(tmp_path):
    torch.save({1: torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: expected a dict of tensors by name, found key 1 holding a Tensor"):
        lamina.MistralForCausalLM.from_pretrained(tmp_path, config=lamina.MistralConfig(
            vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=4))


# -- Mistral's params.json -------------------------------------------------------------------------

PARAMS = dict(dim=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, hidden_dim=16, norm_eps=1e-5, vocab_size=16)


def _mistral_dir(tmp_path: Path, params: dict | str) -> Path:
    (tmp_path / "params.json").write_text(params if isinstance(params, str) else json.dumps(params))
    save_file({"layers.0.attention_norm.weight": torch.ones(8)}, tmp_path / "consolidated.safetensors")
    return tmp_path


@pytest.mark.parametrize("params, message", [
    (DEEP_JSON, "not valid JSON"),
    ('{"dim": ' + LONG_INT + "}", "not valid JSON"),
    ({**PARAMS, "dim": "x"}, "key 'dim': expected a positive integer, found 'x'"),
    ({**PARAMS, "dim": float("inf")}, "key 'dim': expected a positive integer, found inf"),
    ({**PARAMS, "n_heads": 0, "head_dim": None}, "key 'n_heads': expected a positive integer, found 0"),
    ({**PARAMS, "norm_eps": "x"}, "key 'norm_eps': expected a finite number, found 'x'"),
    ({**PARAMS, "max_seq_len": "x"}, "key 'max_seq_len': expected a positive integer, found 'x'"),
    ({**PARAMS, "moe": [1]}, r"key 'moe': expected an object, found \[1\]"),
    ({**PARAMS, "moe": {"num_experts": "x"}}, "key 'moe.num_experts': expected a positive integer, found 'x'"),
    ({**PARAMS, "sliding_window": True}, "sliding_window: expected a positive int or a list of them, found True"),
    # a list of 10**12 per-layer windows would be built before any check
    ({**PARAMS, "n_layers": 10**12, "sliding_window": 4}, "key 'n_layers' is 1000000000000, but the weights hold 1 layers"),
])
def test_malformed_params_json_names_the_key(tmp_path, params, message):
    with pytest.raises(CheckpointError, match=rf"params\.json: {message}"):
        lamina.AutoModelForCausalLM.from_pretrained(_mistral_dir(tmp_path, params))


# -- Megatron zips and the restricted unpickler ----------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _checkpoint_bytes(tmp_path: Path, state: dict) -> bytes:
    torch.save(state, tmp_path / "state.pt", _use_new_zipfile_serialization=False)
    return (tmp_path / "state.pt").read_bytes()


@pytest.mark.parametrize("damage, found", [
    ("deflate", "error"), ("local header", "BadZipFile"), ("encrypted", "RuntimeError"), ("method", "NotImplementedError"),
])
def test_damaged_megatron_zip_names_the_archive(tmp_path, damage, found):
    member = "release/mp_rank_00/model_optim_rng.pt"
    state = _checkpoint_bytes(tmp_path, {"model": {"w": torch.arange(64.0)}, "checkpoint_version": 3.0})
    data = bytearray(_zip(tmp_path / "ok.zip", {member: state}).read_bytes())
    central = data.rfind(b"PK\x01\x02")
    if damage == "deflate":
        start = data.find(member.encode()) + len(member) + 10
        data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])
    elif damage == "local header":
        data[3] = 5
    elif damage == "encrypted":
        data[central + 8] |= 1
    else:
        data[central + 10 : central + 12] = struct.pack("<H", 99)
    (tmp_path / "damaged.zip").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"damaged\.zip: damaged zip archive \({found}"):
        load_megatron_checkpoint(tmp_path / "damaged.zip")


def test_megatron_rank_folder_of_thousands_of_digits(tmp_path):
    state = _checkpoint_bytes(tmp_path, {"model": {}})
    path = _zip(tmp_path / "ranks.zip", {f"release/mp_rank_{LONG_INT}/model_optim_rng.pt": state})
    with pytest.raises(CheckpointError, match=r"ranks\.zip: no model_optim_rng\.pt found"):
        load_megatron_checkpoint(path)


def test_megatron_tracker_of_thousands_of_digits(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text(LONG_INT)
    with pytest.raises(CheckpointError, match=r"latest_checkpointed_iteration\.txt: expected 'release' or an iteration number, found '999"):
        load_megatron_checkpoint(tmp_path)


def test_megatron_model_dict_containing_itself(tmp_path):
    model: dict = {"w": torch.ones(1)}
    model["self"] = model
    torch.save({"model": model, "checkpoint_version": 3.0}, tmp_path / "model_optim_rng.pt")
    checkpoint = load_megatron_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"model_optim_rng\.pt: the model dict nests deeper than 32 levels at 'self\.self\."):
        checkpoint.rank_tensors(0)


@pytest.mark.parametrize("version", ["x", [3.0], float("nan")])
def test_megatron_checkpoint_version_that_is_not_a_number(tmp_path, version):
    torch.save({"model": {}, "checkpoint_version": version, "args": argparse.Namespace()}, tmp_path / "model_optim_rng.pt")
    checkpoint = load_megatron_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"model_optim_rng\.pt: checkpoint_version: expected a number, found"):
        checkpoint.checkpoint_version


@pytest.mark.parametrize("damage", ["sys_info", "storage key"])
def test_corrupt_legacy_checkpoint_is_a_checkpoint_error(tmp_path, damage):
    data = bytearray(_checkpoint_bytes(tmp_path, {"model": {"w": torch.arange(6.0)}, "checkpoint_version": 3.0}))
    if damage == "sys_info":  # a string of length 0 whose bytes then run as opcodes: IndexError before
        data[data.index(b"short") - 4] = 0
    else:  # a storage key the storage list does not hold: AssertionError before
        key = re.search(rb"Storage\nq.X....([0-9])", bytes(data), re.DOTALL)
        data[key.start(1)] = ord("1") if key.group(1) != b"1" else ord("2")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt: not a loadable PyTorch checkpoint"):
        load_pickled_bytes(bytes(data), "corrupt.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refused_pickle_opcode_reports_the_reason_not_torchs_advice(tmp_path):
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a loadable PyTorch checkpoint \(Unsupported operand 149\)"):
        # protocol 4 frames, which the weights-only unpickler does not read
        load_pickled_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.", "plain.pt")


# -- config.json -----------------------------------------------------------------------------------

CONFIG = dict(model_type="mistral", vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=32)


@pytest.mark.parametrize("text, message", [
    (DEEP_JSON, "config.json: not valid JSON"),
    ('{"model_type": "mistral", "vocab_size": ' + LONG_INT + "}", "config.json: not valid JSON"),
    (json.dumps({**CONFIG, "model_type": ["mistral"]}), r"config.json: model_type: expected a string, found \['mistral'\]"),
    (json.dumps({**CONFIG, "id2label": [1, 2]}), r"id2label: expected an object of integer id → label, found \[1, 2\]"),
    (json.dumps({**CONFIG, "id2label": {"x": "a"}}), "id2label: expected an object of integer id → label"),
    (json.dumps({**CONFIG, "label2id": 3}), "label2id: expected an object of label → id, found 3"),
    (json.dumps({**CONFIG, "num_labels": "3"}), r"num_labels: expected an integer in \[0, 1048576\], found '3'"),
    (json.dumps({**CONFIG, "num_labels": 10**12}), r"num_labels: expected an integer in \[0, 1048576\], found 1000000000000"),
    (json.dumps({**CONFIG, "validate": 1}), "validate: not a configuration key"),
    (json.dumps({**CONFIG, "__class__": 1}), "__class__: not a configuration key"),
    (json.dumps({**CONFIG, "use_return_dict": False}), "use_return_dict: not a configuration key"),
    (json.dumps({**CONFIG, "_extra_keys": 5}), "_extra_keys: not a configuration key"),
])
def test_malformed_config_json_names_the_key(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message):
        lamina.AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("rows, heads", [(6, 2), (8, 0), (8, 2**31)])
def test_interleaved_rows_the_heads_cannot_share_are_named(rows, heads):
    from lamina.checkpoints.interleaved import InterleavedRotaryTensors

    tensors = InterleavedRotaryTensors({"model.layers.0.self_attn.q_proj.weight": None}, lambda _, dtype: torch.ones(rows, 4),
                                       {"num_attention_heads": heads, "num_key_value_heads": 1}, "x.gguf")  # fmt: skip
    with pytest.raises(CheckpointError, match=rf"x\.gguf: model.layers.0.self_attn.q_proj.weight has {rows} rows"):
        tensors["model.layers.0.self_attn.q_proj.weight"]

"""GGUF loading: dequantization, llama.cpp's q/k permutation, config from metadata, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lamina
from lamina.checkpoints.gguf import _block_dequantize, load_gguf, read_gguf
from lamina.checkpoints.interleaved import permute_rotary, unpermute_rotary

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def _store(writer, name: str, weight: torch.Tensor, kind) -> torch.Tensor:
    """Write `weight` as `kind`; return the values a reader gets back."""
    array = weight.detach().float().numpy()
    if kind == Q.F32:
        writer.add_tensor(name, array)
        return weight
    if kind == Q.F16:
        writer.add_tensor(name, array.astype(np.float16))
        return torch.from_numpy(array.astype(np.float16).astype(np.float32))
    packed = gguf.quants.quantize(array, kind)
    writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
    return torch.from_numpy(gguf.quants.dequantize(packed, kind)).reshape(weight.shape)


def _writer(path: Path, arch: str, sizes: dict = TINY):
    """A GGUF writer holding the hyper-parameters `sizes` (TINY's keys)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(sizes["num_hidden_layers"])
    writer.add_context_length(sizes["max_position_embeddings"])
    writer.add_embedding_length(sizes["hidden_size"])
    writer.add_feed_forward_length(sizes["intermediate_size"])
    writer.add_head_count(sizes["num_attention_heads"])
    writer.add_head_count_kv(sizes["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(sizes["rms_norm_eps"])
    writer.add_rope_freq_base(sizes["rope_theta"])
    return writer


def _close(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(path: Path, arch: str = "llama", kinds=(Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1), sliding_window=None,
               seed: int = 0, extra_metadata=None, sizes: dict | None = None):
    """A tiny random model as GGUF, and the transformers model holding exactly the stored values;
    `extra_metadata(writer)` adds more keys (a tokenizer), `sizes` replaces some of TINY's."""
    torch.manual_seed(seed)
    sizes = {**TINY, **(sizes or {})}
    extra = {"sliding_window": sliding_window} if arch == "mistral" else {}
    config = (transformers.MistralConfig if arch == "mistral" else transformers.LlamaConfig)(**sizes, **extra)
    model = (transformers.MistralForCausalLM if arch == "mistral" else transformers.LlamaForCausalLM)(config).eval()
    writer = _writer(path, arch, sizes)
    writer.add_vocab_size(sizes["vocab_size"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if sliding_window:
        writer.add_sliding_window(sliding_window)
    if extra_metadata is not None:
        extra_metadata(writer)
    state = {}
    for index, (name, weight) in enumerate(model.state_dict().items()):
        kind = Q.F32 if weight.dim() == 1 else kinds[index % len(kinds)]
        heads = {"q_proj": sizes["num_attention_heads"], "k_proj": sizes["num_key_value_heads"]}
        rotary = next((h for p, h in heads.items() if p in name), None)
        stored = weight if rotary is None else permute_rotary(weight, rotary)
        back = _store(writer, _gguf_name(name), stored, kind)
        state[name] = back if rotary is None else unpermute_rotary(back, rotary)
    _close(writer)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("kind, block_bytes", [("Q8_0", 34), ("Q4_0", 18), ("Q4_1", 20)])
def test_block_dequantize_equals_gguf_package(kind, block_bytes):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (8, block_bytes * 3), dtype=np.uint8)
    for start in range(0, raw.shape[1], block_bytes):
        for offset in (0, 2) if kind == "Q4_1" else (0,):
            scales = rng.standard_normal(8).astype(np.float16)
            raw[:, start + offset : start + offset + 2] = scales.view(np.uint8).reshape(8, 2)
    expected = gguf.quants.dequantize(raw, getattr(Q, kind))
    found = _block_dequantize(raw, kind).reshape(expected.shape).numpy()
    np.testing.assert_array_equal(found, expected)


def test_rotary_permutation_round_trips():
    weight = torch.arange(8 * 3 * 5, dtype=torch.float32).reshape(24, 5)
    assert torch.equal(unpermute_rotary(permute_rotary(weight, 3), 3), weight)
    assert not torch.equal(permute_rotary(weight, 3), weight)


@pytest.mark.parametrize("arch, window", [("llama", None), ("mistral", 5)])
def test_synthetic_gguf_logits_equal_transformers(tmp_path, arch, window):
    path = tmp_path / "tiny.gguf"
    reference = write_gguf(path, arch, sliding_window=window)
    model = lamina.AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert getattr(model.config, "sliding_window", None) == window
    ids = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        found = model(ids).logits
    torch.testing.assert_close(found, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(model.generate(ids, max_new_tokens=5), reference.generate(ids, max_new_tokens=5, do_sample=False))


def test_header_reader_equals_gguf_reader(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    ours = read_gguf(path)
    reader = gguf.GGUFReader(path)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == field.contents(), key
    for tensor in reader.tensors:
        info = ours.tensors[tensor.name]
        assert info.type_name == tensor.tensor_type.name
        assert ours.rows(info)[:].tobytes() == tensor.data.tobytes()


def test_not_gguf_is_left_to_other_loaders(tmp_path):
    assert load_gguf(tmp_path) is None
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04")
    assert load_gguf(tmp_path / "model.bin") is None


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    data = path.read_bytes()
    for cut in (3, 40, len(data) // 3, len(data) - 100):
        broken = tmp_path / f"broken{cut}.gguf"
        broken.write_bytes(data[:cut])
        with pytest.raises(lamina.CheckpointError, match=f"broken{cut}.gguf"):
            lamina.AutoModelForCausalLM.from_pretrained(broken)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    path = tmp_path / "q5.gguf"
    write_gguf(path, kinds=(Q.Q5_0,))
    with pytest.raises(lamina.UnsupportedError, match=r"q5.gguf: tensor 'token_embd.weight' has GGUF type Q5_0, expected one of F32"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt.gguf"
    writer = gguf.GGUFWriter(str(path), "bloom")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    _close(writer)
    with pytest.raises(lamina.UnsupportedError, match="architecture 'bloom'"):
        lamina.AutoModelForCausalLM.from_pretrained(path)


def test_type_table_is_the_gguf_packages():
    from lamina.checkpoints.gguf import _TYPES

    for type_id, (name, block, block_bytes) in _TYPES.items():
        assert Q(type_id).name == name
        assert gguf.GGML_QUANT_SIZES[Q(type_id)] == (block, block_bytes)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q4_K", "F16"])
def test_dequantizing_in_steps_equals_the_whole_tensor(kind, monkeypatch):
    """A few rows a step (here 3 rows of 64), straight into the asked dtype: the same values as
    dequantizing the whole tensor in float32 and converting after."""
    from lamina.checkpoints import gguf as reader

    rng = np.random.default_rng(2)
    weight = rng.standard_normal((10, 256)).astype(np.float32)
    if kind == "F16":
        raw = weight.astype(np.float16).view(np.uint8)
    elif kind == "Q4_K":  # the gguf package cannot quantize to it: bytes that decode to finite values
        raw = rng.integers(0, 60, (10, 144), dtype=np.uint8)
    else:
        raw = gguf.quants.quantize(weight, getattr(Q, kind))
    info = reader.TensorInfo("w", (10, 256), kind, int(getattr(Q, kind)), 0, raw.nbytes)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, getattr(Q, kind)).astype(np.float32)).reshape(10, 256)
    monkeypatch.setattr(reader, "_STEP_VALUES", 3 * 256)
    assert torch.equal(reader.dequantize(raw, info), expected)
    found = reader.dequantize(raw, info, torch.bfloat16)
    assert found.dtype == torch.bfloat16 and torch.equal(found, expected.to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K", "BF16", "F16", "F32"])
def test_other_types_dequantize_as_the_gguf_package_does(kind):
    from lamina.checkpoints.gguf import TensorInfo, dequantize

    block, block_bytes = gguf.GGML_QUANT_SIZES[getattr(Q, kind)]
    columns = 256 if block > 1 else 8
    row_bytes = columns // block * block_bytes
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (2, row_bytes), dtype=np.uint8)
    if kind in ("BF16", "F16"):  # keep every value finite
        raw[:, 1::2] &= 0x3F
    elif kind == "F32":
        raw[:, 3::4] &= 0x3F
    else:  # K-quants: an fp16 super-block scale sits right after the quants or at the start
        raw[:, :] = rng.integers(0, 60, raw.shape, dtype=np.uint8)
    info = TensorInfo("w", (2, columns), kind, int(getattr(Q, kind)), 0, raw.nbytes)
    found = dequantize(raw, info).reshape(2, columns)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, getattr(Q, kind)).astype(np.float32))
    assert found.dtype == torch.float32
    torch.testing.assert_close(found, expected.reshape(2, columns), equal_nan=True)


def test_mixtral_gguf_with_stacked_experts(tmp_path):
    """llama.cpp's Mixtral: a llama GGUF with expert_count and `ffn_*_exps` tensors (experts, out, in)."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**TINY, num_local_experts=3, num_experts_per_tok=2)
    reference = transformers.MixtralForCausalLM(config).eval()
    path = tmp_path / "moe.gguf"
    writer = _writer(path, "llama")
    writer.add_expert_count(3)
    writer.add_expert_used_count(2)
    intermediate = TINY["intermediate_size"]
    for name, weight in reference.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            layer = name.split(".")[2]
            _store(writer, f"blk.{layer}.ffn_gate_exps.weight", weight[:, :intermediate], Q.F32)
            _store(writer, f"blk.{layer}.ffn_up_exps.weight", weight[:, intermediate:], Q.F32)
        elif name.endswith("mlp.experts.down_proj"):
            _store(writer, f"blk.{name.split('.')[2]}.ffn_down_exps.weight", weight, Q.F32)
        elif name.endswith("mlp.gate.weight"):
            _store(writer, f"blk.{name.split('.')[2]}.ffn_gate_inp.weight", weight, Q.F32)
        else:
            heads = TINY["num_attention_heads"] if "q_proj" in name else TINY["num_key_value_heads"]
            stored = permute_rotary(weight, heads) if "q_proj" in name or "k_proj" in name else weight
            _store(writer, _gguf_name(name), stored, Q.F32)
    _close(writer)
    model = lamina.AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_experts_per_tok == 2
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    # quantized as the experts are read (one stacked GGUF tensor feeds several experts): the same as after
    from lamina.quantization import QuantizationConfig, quantize
    from lamina.quantization.experts import QuantizedExperts

    config = QuantizationConfig("int8")
    quantized = lamina.AutoModelForCausalLM.from_pretrained(path, quantization_config=config)
    assert isinstance(quantized.model.layers[0].mlp.experts, QuantizedExperts)
    with torch.no_grad():
        assert torch.equal(quantized(ids).logits, quantize(model, config)(ids).logits)

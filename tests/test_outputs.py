"""transformers' newer `cache` name for `past_key_values`: the same output field, the same argument."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.errors import InputError


def test_cache_is_the_past_key_values_field():
    torch.manual_seed(0)
    model = lamina.MistralForCausalLM(lamina.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    out = model(torch.tensor([[1, 2, 3]]), use_cache=True)
    assert out.past_key_values is not None
    assert out.cache is out.past_key_values
    assert out["cache"] is out["past_key_values"] and out.get("cache") is out.past_key_values
    assert "cache" in out and "past_key_values" in out
    assert out.keys() == ["logits", "past_key_values"]  # one field, in transformers' tuple position
    assert out.to_tuple()[1] is out.cache
    without = model(torch.tensor([[1, 2, 3]]), use_cache=False)
    assert without.cache is None and "cache" not in without and without.get("cache", 7) == 7


def test_cache_argument_continues_like_past_key_values():
    torch.manual_seed(0)
    model = lamina.MistralForCausalLM(lamina.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        whole = model(ids).logits[:, -1]
        first = model(ids[:, :3], use_cache=True)
        step = model(ids[:, 3:], cache=first.cache, use_cache=True)
        assert torch.allclose(step.logits[:, -1], whole, atol=1e-5)
        with pytest.raises(InputError, match="as `cache` or as `past_key_values`"):
            model(ids[:, 3:], cache=step.cache, past_key_values=step.cache)

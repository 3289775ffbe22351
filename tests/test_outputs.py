"""Output dataclasses: transformers' newer `cache` name for `past_key_values` reads the same field."""

from __future__ import annotations

import torch

import lamina


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

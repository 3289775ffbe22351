"""Incremental decoding through every cache kind equals one full forward, around and far past the
sliding window, with a left-padded batch; the rolling cache stays at the window size."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.cache import DynamicLayerCache, RollingLayerCache, StaticLayerCache
from tests.parity import max_diff

WINDOW = 4


def tiny(family: str = "Ministral", **extra):
    config = dict(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=WINDOW, pad_token_id=0,
    )
    if family == "Ministral":
        config["layer_types"] = ["full_attention", "sliding_attention", "sliding_attention"]
    if family == "Mixtral":
        config.update(num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    return getattr(lamina, family + "ForCausalLM")(getattr(lamina, family + "Config")(**config, **extra)).eval()


def left_padded(length: int):
    torch.manual_seed(1)
    ids = torch.randint(1, 50, (3, length))
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 2, 5)):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def decode_incrementally(model, ids, mask, prompt_len: int, kind: str) -> torch.Tensor:
    """Prefill `prompt_len` tokens, then feed the rest one at a time; returns logits for all."""
    cache = model.model.make_cache(kind, max_length=ids.shape[1])
    positions = position_ids(mask)
    out = model(ids[:, :prompt_len], attention_mask=mask[:, :prompt_len], position_ids=positions[:, :prompt_len],
                past_key_values=cache, use_cache=True)
    logits = [out.logits]
    for t in range(prompt_len, ids.shape[1]):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
                    past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", ["Mistral", "Ministral", "Mixtral"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("prompt_len", [WINDOW - 1, WINDOW, WINDOW + 1, 2])
def test_incremental_equals_full_forward(family, kind, prompt_len):
    model = tiny(family)
    ids, mask = left_padded(3 * WINDOW + 2)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
        stepped = decode_incrementally(model, ids, mask, prompt_len, kind)
    assert not torch.isnan(stepped).any()
    assert max_diff(full, stepped, mask) <= 1e-4


def test_prompt_longer_than_window_then_decoding():
    model = tiny("Mistral")
    ids, mask = left_padded(3 * WINDOW)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False, position_ids=position_ids(mask)).logits
        stepped = decode_incrementally(model, ids, mask, 2 * WINDOW + 1, "dynamic")
    assert max_diff(full, stepped, mask) <= 1e-4


def test_rolling_cache_stays_at_window():
    model = tiny("Ministral")
    ids, mask = left_padded(3 * WINDOW + 2)
    cache = model.model.make_cache("dynamic")
    with torch.no_grad():
        out = model(ids[:, :5], attention_mask=mask[:, :5], past_key_values=cache)
        for t in range(5, ids.shape[1]):
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=out.past_key_values)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicLayerCache, RollingLayerCache, RollingLayerCache]
    for layer in cache.layers[1:]:
        assert layer.keys.shape[2] == WINDOW and layer.values.shape[2] == WINDOW
    assert cache.layers[0].keys.shape[2] == ids.shape[1]
    assert cache.get_seq_length() == ids.shape[1]


def test_static_cache_preallocates_and_writes_in_place():
    model = tiny("Ministral")
    ids, mask = left_padded(8)
    cache = model.model.make_cache("static", max_length=16)
    with torch.no_grad():
        model(ids[:, :6], attention_mask=mask[:, :6], past_key_values=cache)
        buffer = cache.layers[0].keys
        model(ids[:, 6:7], attention_mask=mask[:, :7], past_key_values=cache)
    assert isinstance(cache.layers[0], StaticLayerCache)
    assert cache.layers[0].keys is buffer and buffer.shape[2] == 16


def test_window_counts_keys_on_every_backend():
    """Each query sees exactly min(position + 1, window) keys (the reference's off-by-one rule)."""
    for backend in ("eager", "sdpa"):
        model = tiny("Mistral", attn_implementation=backend)
        ids = torch.randint(1, 50, (1, 3 * WINDOW))
        with torch.no_grad():
            out = model(ids, output_attentions=True, use_cache=False)
        probs = out.attentions[0][0, 0]
        seen = (probs > 0).sum(-1)
        expected = torch.clamp(torch.arange(1, 3 * WINDOW + 1), max=WINDOW)
        assert torch.equal(seen, expected)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_static_cache_prefill_without_attention_mask(backend):
    """A prefill into a preallocated buffer masks the empty future slots on every backend."""
    model = tiny("Mistral", attn_implementation=backend)
    ids = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cached = model(ids, past_key_values=model.model.make_cache("static", max_length=16)).logits
    assert max_diff(full, cached) <= 1e-5

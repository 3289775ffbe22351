"""bf16 autocast on the CPU (what `Trainer(bf16=True)` runs under): forward with a cache and `generate`
give transformers' logits and tokens under the same autocast, through a growing, a static and a
rolling cache (rotated keys come out float32 there, values bf16)."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina import kernels
from tests.training.tiny import TINY

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=[None, 4], ids=["full", "sliding"])
def models(request, tmp_path_factory):
    kernels.ops()  # loaded (where they build), so that their decode paths are among those autocast must avoid
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mistral")
    transformers.MistralForCausalLM(transformers.MistralConfig(**TINY, sliding_window=request.param)).save_pretrained(path)
    return transformers.MistralForCausalLM.from_pretrained(path), lamina.AutoModelForCausalLM.from_pretrained(path)


def _prompt():
    ids = torch.randint(3, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


def test_forward_with_cache_under_autocast(models):
    reference, ours = models
    ids, mask = _prompt()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(input_ids=ids, attention_mask=mask, use_cache=True)
        found = ours(input_ids=ids, attention_mask=mask, use_cache=True)
        following = torch.tensor([[5], [6]])
        longer = torch.cat((mask, torch.ones_like(following)), dim=1)
        expected_next = reference(input_ids=following, attention_mask=longer, past_key_values=expected.past_key_values)
        found_next = ours(input_ids=following, attention_mask=longer, past_key_values=found.past_key_values)
    assert found.logits.dtype == expected.logits.dtype == torch.bfloat16
    keep = mask.bool()
    torch.testing.assert_close(found.logits[keep].float(), expected.logits[keep].float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(found_next.logits.float(), expected_next.logits.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_generate_under_autocast(models, cache_implementation):
    reference, ours = models
    ids, mask = _prompt()
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, cache_implementation=cache_implementation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference.generate(ids, attention_mask=mask, **settings)
        found = ours.generate(ids, attention_mask=mask, **settings)
    assert torch.equal(found, expected)

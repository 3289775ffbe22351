"""`attend` for one query over a cache on the CPU: lamina's kernel where it applies (one mask for
every head), SDPA's result either way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lamina import kernels
from lamina.layers import attention

OPS = kernels.ops()
needs_kernels = pytest.mark.skipif(OPS is None, reason=f"lamina kernels unavailable: {kernels.unavailable_reason()}")


def _inputs(mask_heads: int):
    generator = torch.Generator().manual_seed(0)
    # a query laid out (batch, seq, heads, dim) and transposed, as the layers hand it over
    query = torch.randn(2, 1, 6, 16, generator=generator).transpose(1, 2)
    key, value = (torch.randn(2, 2, 10, 16, generator=generator) for _ in range(2))
    mask = torch.zeros(2, mask_heads, 1, 10)
    mask[0, ..., 7:] = torch.finfo(torch.float32).min
    mask[1, ..., :2] = torch.finfo(torch.float32).min
    if mask_heads > 1:
        mask = mask + torch.randn(mask.shape, generator=generator)  # a per-head bias
    return query, key, value, mask


@needs_kernels
@pytest.mark.parametrize("mask_heads", [1, 6])
def test_single_query_attention_matches_sdpa(monkeypatch, mask_heads):
    calls = []
    monkeypatch.setattr(attention.kernels, "loaded", lambda: OPS)
    original = OPS.decode_attention
    monkeypatch.setattr(OPS, "decode_attention", lambda *args: calls.append(args[0].shape) or original(*args),
                        raising=False)
    query, key, value, mask = _inputs(mask_heads)
    with torch.no_grad():
        out, weights = attention.attend("sdpa", query, key, value, mask, 0.25)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert weights is None
    assert calls == ([(2, 6, 16)] if mask_heads == 1 else [])  # a per-head mask goes to SDPA

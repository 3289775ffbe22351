"""The MoE dispatch paths (gathered for few tokens, grouped for many) equal a plain loop."""

from __future__ import annotations

import pytest
import torch

from lamina.layers.moe import GATHER_LIMIT, SparseMoE


def plain_loop(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition the fast paths must reproduce."""
    flat = x.reshape(-1, x.shape[-1])
    _, weights, index = moe.route(flat)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for slot in range(index.shape[1]):
            out[t] += weights[t, slot] * moe.experts.expert(int(index[t, slot]), flat[t : t + 1])[0]
    return out.view_as(x)


@pytest.mark.parametrize("tokens", [1, GATHER_LIMIT // 2, 40])  # gathered, gathered, grouped
def test_dispatch_equals_plain_loop(tokens):
    torch.manual_seed(0)
    moe = SparseMoE(hidden_size=16, intermediate_size=24, num_experts=6, top_k=2, act="silu")
    torch.nn.init.normal_(moe.experts.gate_up_proj, std=0.2)
    torch.nn.init.normal_(moe.experts.down_proj, std=0.2)
    x = torch.randn(1, tokens, 16)
    with torch.no_grad():
        out, logits = moe(x)
        expected = plain_loop(moe, x)
    assert logits.shape == (tokens, 6)
    assert torch.allclose(out, expected, atol=1e-6)


def test_both_paths_agree_on_the_same_pairs():
    torch.manual_seed(1)
    moe = SparseMoE(hidden_size=8, intermediate_size=12, num_experts=4, top_k=2, act="silu")
    torch.nn.init.normal_(moe.experts.gate_up_proj, std=0.3)
    torch.nn.init.normal_(moe.experts.down_proj, std=0.3)
    x = torch.randn(20, 8)
    ids = torch.randint(0, 4, (20,))
    with torch.no_grad():
        assert torch.allclose(moe.experts.gathered(x, ids), moe.experts.grouped(x, ids), atol=1e-6)

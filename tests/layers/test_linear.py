"""`lamina.layers.linear.Linear`: half-precision products over many rows run in float32 on CPUs
without half-precision matrix units, and round like the half kernel."""

from __future__ import annotations

import pytest
import torch

from lamina.layers import linear


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    return linear.Linear(64, 48, bias=True).to(torch.bfloat16)


def test_many_rows_upcast_on_a_slow_cpu(layer, monkeypatch):
    monkeypatch.setitem(linear._SLOW_HALF, torch.bfloat16, True)
    x = torch.randn(2, linear.UPCAST_MIN_ROWS, 64).to(torch.bfloat16)
    expected = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16)
    assert torch.equal(layer(x), expected)
    # the half kernel itself accumulates in float32 and rounds once: the same values up to order
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=2e-2, rtol=1e-2)


def test_few_rows_and_fast_cpus_keep_the_half_kernel(layer, monkeypatch):
    monkeypatch.setitem(linear._SLOW_HALF, torch.bfloat16, True)
    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(linear.F, "linear", lambda x, w, b=None: calls.append(x.dtype) or real(x, w, b))
    layer(torch.randn(1, linear.UPCAST_MIN_ROWS - 1, 64).to(torch.bfloat16))
    monkeypatch.setitem(linear._SLOW_HALF, torch.bfloat16, False)
    layer(torch.randn(1, 64, 64).to(torch.bfloat16))
    assert calls == [torch.bfloat16, torch.bfloat16]


def test_gradients_reach_the_half_weights(layer, monkeypatch):
    monkeypatch.setitem(linear._SLOW_HALF, torch.bfloat16, True)
    x = torch.randn(32, 64).to(torch.bfloat16)
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16

"""Rotary tables: cos and sin of the float32 angles to float64 accuracy, rounded once."""

from __future__ import annotations

import numpy as np
import torch

from lamina.layers.rotary import RotaryEmbedding


def test_rotary_tables_are_the_float32_angles_correctly_rounded():
    """PyTorch's float32 cos is within an ulp or two (~3.6e-8 here), and its first call in a process
    now and then returned values off by 1.5e-4 on an AMX Xeon VM; the tables take cos and sin in
    float64, so every entry is within 1e-8 of the exact value, whatever the call."""
    rope = RotaryEmbedding(64, {"rope_type": "default", "rope_theta": 100000.0}, 8192)
    positions = torch.arange(8192)[None]
    cos, sin = rope(positions, torch.float32)
    freqs = (positions[..., None].float() * rope.inv_freq.float()).double().numpy()
    angles = np.concatenate([freqs, freqs], axis=-1)
    torch.testing.assert_close(cos, torch.from_numpy(np.cos(angles)).float(), atol=1e-8, rtol=0)
    torch.testing.assert_close(sin, torch.from_numpy(np.sin(angles)).float(), atol=1e-8, rtol=0)
    # bf16 tables: the same values rounded to bf16
    cos16, _ = rope(positions, torch.bfloat16)
    assert torch.equal(cos16, cos.to(torch.bfloat16))

"""Weights drawn from a name: the same tensors on any machine with the same torch, so a fixture
can record a model by its config and its parameters' names and shapes, without the weights.

`scripts/record_pipeline_fixtures.py` fills transformers 4.46.3 models with them; the tests
rebuild the same checkpoint for lamina.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch


def synthetic_tensor(name: str, shape: list[int], scale: float) -> torch.Tensor:
    """Norm weights near 1, everything else normal of std `scale`, seeded by `name`."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=generator)
    if name.endswith("weight") and any(part in name.lower() for part in ("norm", "ln_")):
        return 1 + 0.1 * noise
    return scale * noise


def synthetic_state(shapes: dict[str, list[int]], scale: float) -> dict[str, torch.Tensor]:
    return {name: synthetic_tensor(name, shape, scale) for name, shape in shapes.items()}


def write_checkpoint(shapes: dict[str, list[int]], scale: float, config_json: str, directory: Path) -> Path:
    """A loadable model directory: the recorded config and the synthetic weights."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config_json)
    save_file(synthetic_state(shapes, scale), str(directory / "model.safetensors"))
    return directory

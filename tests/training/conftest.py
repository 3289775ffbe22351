"""A tiny random Mistral checkpoint saved by transformers, shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from tests.training.tiny import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mistral")
    transformers.MistralForCausalLM(transformers.MistralConfig(**TINY)).save_pretrained(path)
    return path

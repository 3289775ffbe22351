"""Where a model lives: a local directory, or a Hub id fetched through huggingface_hub when present.

The Hub's loading arguments (`token`, `revision`, …) are arguments of the download only: they are
handed to `snapshot_download` and never stored on a config or written to a file.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError

# from_pretrained's arguments that only say how to fetch (huggingface_hub's names)
HUB_ARGUMENTS = ("token", "revision", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")
# what every download takes: configs, tokenizers (Mistral's `tokenizer.model.v3` included), templates
_METADATA = ("*.json", "*.model", "tokenizer.model.v*", "*.txt", "*.jinja")


def take_hub_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the Hub's loading arguments from `kwargs` and return those that are set
    (`use_auth_token` is transformers' older spelling of `token`)."""
    found = {name: kwargs.pop(name) for name in HUB_ARGUMENTS if name in kwargs}
    if "use_auth_token" in kwargs:
        found.setdefault("token", kwargs.pop("use_auth_token"))
    return {name: value for name, value in found.items() if value is not None}


def locate_checkpoint(name_or_path: str | os.PathLike, gguf_file: str | None = None, **hub: Any) -> Path:
    """A model directory or checkpoint file, local or fetched (see `resolve_model_dir`); `gguf_file`
    names a GGUF file inside it (transformers' spelling)."""
    source = resolve_model_dir(name_or_path, allow_file=True, weights_file=gguf_file, **hub)
    return source / gguf_file if gguf_file is not None and source.is_dir() else source


def resolve_model_dir(
    name_or_path: str | os.PathLike, allow_file: bool = False, weights_file: str | None = None,
    weights: bool = True, **hub: Any
) -> Path:
    """A local directory (or file, when `allow_file`) as is; otherwise a Hub snapshot.

    `hub` holds the loading arguments of `HUB_ARGUMENTS`; `subfolder` applies to a local directory
    too. A snapshot takes the metadata and `weights_file` (a GGUF file named by `gguf_file`), or
    else the safetensors weights, or, where the repository has none, its `*.bin` weights (none of
    them when not `weights`: a tokenizer's or config's reader). Offline,
    or without huggingface_hub, the error says what was looked for and where.
    """
    subfolder = hub.pop("subfolder", "")
    path = Path(name_or_path).expanduser() / subfolder
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
    try:
        return _download(name, subfolder, weights_file, weights, hub)
    except Exception as err:  # the hub client raises many types; all mean "could not fetch"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "HF_HUB_OFFLINE=1 is set" if offline else f"{type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(
            f"{name!r} is not a local directory, and fetching it from the Hugging Face Hub failed ({reason})"
        ) from None


def _download(name: str, subfolder: str, weights_file: str | None, weights: bool, hub: dict[str, Any]) -> Path:
    """The snapshot's folder: metadata and safetensors first; the older formats only where a
    repository has no safetensors (many hold both, and the `.bin` copies would double the download)."""
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""

    def fetch(patterns: tuple[str, ...]) -> Path:
        return Path(snapshot_download(name, allow_patterns=[prefix + p for p in patterns], **hub)) / subfolder

    if weights_file is not None:
        return fetch((*_METADATA, weights_file))
    if not weights:
        return fetch(_METADATA)
    folder = fetch((*_METADATA, "*.safetensors"))
    if not any(folder.glob("*.safetensors")):
        folder = fetch(("*.bin",))
    return folder

"""Reading pickled training checkpoints (Megatron-LM, Adept) without running their code.

A pickle names Python callables that the loader calls to rebuild objects, so an untrusted
`model_optim_rng.pt` could run anything. PyTorch's weights-only unpickler admits only tensors,
storages, dtypes and plain containers; training checkpoints also hold the `argparse.Namespace` of
their training arguments and numpy random-generator states, which are added here and nothing
else. Whatever other global a file names is refused before anything is called.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import CheckpointError, SecurityError
from .io import torch_load_reason


def _numpy_globals() -> list[Any]:
    """What numpy arrays (Megatron's saved `np_rng_state`) need to be rebuilt: the array
    reconstructor, the array and dtype classes. None of them runs user code."""
    try:
        import numpy
    except ImportError:
        return []
    core = getattr(numpy, "_core", None) or numpy.core
    found = [core.multiarray._reconstruct, numpy.ndarray, numpy.dtype]
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return found


def allowed_globals() -> list[Any]:
    """The globals admitted beyond PyTorch's own weights-only set."""
    return [argparse.Namespace, *_numpy_globals()]


_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")


def load_pickled(source: str | os.PathLike | IO[bytes], description: str | None = None) -> Any:
    """Unpickle a `torch.save` file (zip or legacy format) or a plain pickle through the restricted
    unpickler. `source` is a path or a binary file object; `description` names it in errors.

    Raises `SecurityError` naming the refused global when the file asks for anything outside the
    allowed set (nothing from the file is called), `CheckpointError` when it is unreadable.
    """
    where = description or (str(source) if isinstance(source, (str, os.PathLike)) else "<stream>")
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise CheckpointError(f"{where}: no such file")
    mmap = isinstance(source, (str, os.PathLike)) and _is_zip(Path(source))
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        refused = _GLOBAL_NAME.search(str(err))
        if refused:
            raise SecurityError(
                f"{where}: the pickle asks for {refused.group(1)!r}, which the restricted unpickler refuses "
                "(only tensors, storages, plain containers, argparse.Namespace and numpy arrays are admitted); "
                "nothing from the file was run"
            ) from None
        raise CheckpointError(f"{where}: not a loadable PyTorch checkpoint ({torch_load_reason(err)})") from None
    except Exception as err:  # a corrupt file makes torch raise RuntimeError, IndexError, AssertionError, …
        raise CheckpointError(f"{where}: not a loadable PyTorch checkpoint ({torch_load_reason(err)})") from None


def load_pickled_bytes(data: bytes, description: str) -> Any:
    """`load_pickled` on bytes already in memory (a member of a zip archive)."""
    return load_pickled(io.BytesIO(data), description)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"

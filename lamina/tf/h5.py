"""transformers' TensorFlow weight file, `tf_model.h5`, read and written with h5py alone.

The layout is Keras 2's `save_weights` HDF5 format: the root lists the top-level layers in the
attribute `layer_names`; each layer's group lists its weights in `weight_names` (full variable
names, `<model>/<layer>/…/kernel:0`) and stores each weight at that path inside the group.
Attributes larger than HDF5's 64 KiB header limit are split into `name0`, `name1`, …, as Keras
does. Names here drop the model's own name and the `:0` suffix (`mobilebert/embeddings/…`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

TF_WEIGHTS_NAME = "tf_model.h5"
# HDF5 object headers hold at most 64 KiB; Keras keeps attributes below this
ATTRIBUTE_LIMIT = 64512


def _read_attribute(node, name: str, where: str) -> list[str]:
    if name in node.attrs:
        values = list(node.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in node.attrs:
            values.extend(node.attrs[f"{name}{chunk}"])
            chunk += 1
        if chunk == 0:
            raise CheckpointError(f"{where}: attribute {name!r} is missing (not a Keras HDF5 weight file?)")
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _write_attribute(node, name: str, values: list[str]) -> None:
    """Variable-length strings, as Keras writes them; split when their total passes the limit."""
    import h5py

    size = sum(len(v.encode("utf8")) for v in values)
    chunks = -(-size // ATTRIBUTE_LIMIT)
    if chunks <= 1:
        node.attrs.create(name, values, dtype=h5py.string_dtype())
        return
    for index, part in enumerate(np.array_split(np.asarray(values, dtype=object), chunks)):
        node.attrs.create(f"{name}{index}", list(part), dtype=h5py.string_dtype())


def _short_name(weight_name: str) -> str:
    """`model/mobilebert/embeddings/weight:0` → `mobilebert/embeddings/weight`."""
    parts = weight_name.split("/")
    name = "/".join(parts[1:]) if len(parts) > 1 else weight_name
    return name.removesuffix(":0")


def read_tf_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a `tf_model.h5`, float32, under its short name, in file order."""
    import h5py

    path = Path(path)
    weights: dict[str, np.ndarray] = {}
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        for layer in _read_attribute(handle, "layer_names", str(path)):
            if layer not in handle:
                raise CheckpointError(f"{path}: layer {layer!r} is listed in layer_names but has no group")
            group = handle[layer]
            for weight_name in _read_attribute(group, "weight_names", f"{path}:{layer}"):
                if weight_name not in group or not isinstance(group[weight_name], h5py.Dataset):
                    raise CheckpointError(f"{path}: weight {weight_name!r} of layer {layer!r} has no dataset")
                array = group[weight_name][()]
                if not np.issubdtype(array.dtype, np.floating):
                    raise CheckpointError(f"{path}: weight {weight_name!r} has dtype {array.dtype}, expected a float type")
                weights[_short_name(weight_name)] = np.asarray(array, dtype=np.float32)
    return weights


def write_tf_h5(path: str | os.PathLike, weights: Mapping[str, np.ndarray], model_name: str, keras_version: str) -> None:
    """Write `weights` (short names, in order) so that transformers' TF classes load them: one
    top-level layer per first name component, in order of first appearance."""
    import h5py

    layers: dict[str, list[str]] = {}
    for name in weights:
        layers.setdefault(name.split("/")[0], []).append(name)
    with h5py.File(path, "w") as handle:
        handle.attrs["backend"] = "tensorflow"
        handle.attrs["keras_version"] = keras_version
        _write_attribute(handle, "layer_names", list(layers))
        for layer, names in layers.items():
            group = handle.create_group(layer)
            full_names = [f"{model_name}/{name}:0" for name in names]
            _write_attribute(group, "weight_names", full_names)
            for full_name, name in zip(full_names, names):
                group.create_dataset(full_name, data=np.asarray(weights[name], dtype=np.float32))


def checkpoint_name(tf_name: str, ndim: int) -> tuple[str, bool]:
    """transformers' TF weight name → its PyTorch checkpoint name, and whether the layouts
    transpose: `a___b` levels keep `b`, `layer_._0` is `layer.0`, a Keras kernel is a transposed
    `weight`, `gamma`/`beta`/`embeddings` are `weight`/`bias`/`weight`."""
    parts = [part.split("___")[-1].replace("_._", ".") for part in tf_name.split("/")]
    last = parts[-1]
    transpose = last == "kernel" and ndim == 2
    parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias", "embeddings": "weight"}.get(last, last)
    return ".".join(parts), transpose


def load_tf_checkpoint(path: str | os.PathLike) -> tuple[dict, dict] | None:
    """A `FORMAT_LOADERS` entry for lamina's PyTorch classes: a directory holding config.json and
    `tf_model.h5` but no PyTorch weights → (config dict, tensors under checkpoint names); else None.

    transformers' TF MLM heads keep one bias, the one the logits use; it is also given as the
    decoder's bias, which the PyTorch classes store separately.
    """
    import torch

    from ..checkpoints.io import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
    from ..config import CONFIG_NAME, read_config_json

    directory = Path(path)
    if not (directory / TF_WEIGHTS_NAME).is_file() or any(
        (directory / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    ):
        return None
    tensors = {}
    for tf_name, array in read_tf_h5(directory / TF_WEIGHTS_NAME).items():
        name, transpose = checkpoint_name(tf_name, array.ndim)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
    for name in [n for n in tensors if n.endswith("cls.predictions.bias")]:
        tensors.setdefault(name.replace(".bias", ".decoder.bias"), tensors[name])
    return read_config_json(directory / CONFIG_NAME), tensors

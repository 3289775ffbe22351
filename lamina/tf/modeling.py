"""`TFPreTrainedModel`: loading and saving the TensorFlow twins of lamina's PyTorch classes.

A twin names its weights twice (`lamina.tf.layers`): PyTorch checkpoint names, under which it
reads and writes safetensors / `pytorch_model.bin` through its PyTorch class (so the same name
map, prefix rules, checks and tied weights apply), and transformers' TF names, under which it
reads and writes `tf_model.h5`.

`from_pretrained` picks the file as transformers' TF classes do: `pytorch_model.bin` only with
`from_pt=True`, then `model.safetensors`, then `tf_model.h5` (`from_tf=True` insists on the last).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..checkpoints.io import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    atomic_directory,
    write_weights,
)
from ..config import PretrainedConfig
from ..errors import CheckpointError
from ..hub import resolve_model_dir, take_hub_arguments
from ..modeling import LoadingInfo, PreTrainedModel
from .h5 import TF_WEIGHTS_NAME, read_tf_h5, write_tf_h5
from .layers import Entry, Named, checkpoint_entries
from .runtime import keras


def _snake_case(name: str) -> str:
    """`TFMobileBertModel` → `tf_mobile_bert_model`, as Keras names models."""
    words = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


class TFPreTrainedModel(Named, keras.Model):
    """Base of every TF twin. Subclasses set `config_class`, `torch_class` (the PyTorch twin) and
    `base_model_prefix`, and register their weights with `param` / `child` / `share`."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    torch_class: ClassVar[type[PreTrainedModel]]
    base_model_prefix: ClassVar[str] = "model"

    def __init__(self, config: PretrainedConfig, **kwargs: Any) -> None:
        # transformers' TF models are named after their class: the first level of every weight name
        super().__init__(name=kwargs.pop("name", _snake_case(type(self).__name__)), **kwargs)
        self.config = config

    def flag(self, value: bool | None, name: str) -> bool:
        return bool(getattr(self.config, name)) if value is None else value

    # -- weights under both names ---------------------------------------------------------------

    def checkpoint_entries(self) -> list[Entry]:
        return list(checkpoint_entries(self))

    def _tied(self) -> set[str]:
        return set(self.torch_class.tied_weights) if getattr(self.config, "tie_word_embeddings", False) else set()

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The weights under PyTorch checkpoint names and layouts (tied copies left out, as the
        PyTorch classes save them)."""
        tied = self._tied()
        return {e.torch_name: e.variable.numpy() for e in self.checkpoint_entries() if e.torch_name not in tied}

    def load_checkpoint_state(self, state: dict[str, np.ndarray], where: str) -> None:
        """Assign weights given under PyTorch checkpoint names; every one must be present with its shape."""
        tied = self._tied()
        entries = {e.torch_name: e for e in self.checkpoint_entries() if e.torch_name not in tied}
        unexpected = sorted(set(state) - set(entries))
        if unexpected:
            raise CheckpointError(f"{where}: unexpected key {unexpected[0]!r} (not a weight of {type(self).__name__})")
        for name, entry in entries.items():
            if name not in state:
                raise CheckpointError(f"{where}: missing key {name!r} needed by {type(self).__name__}")
            _assign(entry, np.asarray(state[name], np.float32), repr(name), where)

    def tf_weights(self) -> dict[str, np.ndarray]:
        """The weights under transformers' TF names and layouts; a name registered twice (a tied
        copy, or the MLM bias) holds the value registered last."""
        return {e.tf_name: (e.variable.numpy().T if e.transpose else e.variable.numpy()) for e in self.checkpoint_entries()}

    def load_tf_weights(self, weights: dict[str, np.ndarray], where: str, ignore_mismatched_sizes: bool = False) -> LoadingInfo:
        """Assign weights given under transformers' TF names. A head the file lacks keeps its fresh
        initialisation and is reported, like another head's weights in the file; a base weight
        missing or left over is an error."""
        info = LoadingInfo()
        tied = self._tied()
        used = set()
        for entry in self.checkpoint_entries():
            used.add(entry.tf_name)
            if entry.torch_name in tied:
                continue
            if entry.tf_name not in weights:
                if entry.tf_name.startswith(self.base_model_prefix + "/"):
                    raise CheckpointError(f"{where}: missing weight {entry.tf_name!r} needed by {type(self).__name__}")
                info.missing_keys.append(entry.torch_name)
                continue
            value = weights[entry.tf_name]
            value = value.T if entry.transpose else value
            if ignore_mismatched_sizes and tuple(value.shape) != tuple(entry.variable.shape):
                info.mismatched_keys.append((entry.torch_name, tuple(value.shape), tuple(entry.variable.shape)))
                continue
            _assign(entry, value, f"{entry.tf_name!r} (as {entry.torch_name!r})", where)
        for name in weights:
            if name in used:
                continue
            if name.startswith(self.base_model_prefix + "/"):
                raise CheckpointError(f"{where}: unexpected weight {name!r} (not a weight of {type(self).__name__})")
            info.unexpected_keys.append(name)
        return info

    # -- files --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        from_pt: bool = False,
        from_tf: bool = False,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ) -> TFPreTrainedModel:
        """Load from a directory (or Hub id) holding config.json and tf_model.h5, model.safetensors
        or (with `from_pt=True`) pytorch_model.bin."""
        directory = resolve_model_dir(pretrained_model_name_or_path, **take_hub_arguments(config_overrides))
        if config is None:
            config = cls.config_class.from_pretrained(directory, **config_overrides)
        present = {name for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME,
                                     TF_WEIGHTS_NAME) if (directory / name).is_file()}
        pickled = present & {WEIGHTS_NAME, WEIGHTS_INDEX_NAME}
        safe = present & {SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME}
        if from_tf and TF_WEIGHTS_NAME not in present:
            raise CheckpointError(f"{directory}: from_tf=True, but there is no {TF_WEIGHTS_NAME}")
        model = cls(config)
        if not from_tf and ((from_pt and pickled) or safe):
            info = model._load_torch_checkpoint(directory, ignore_mismatched_sizes)
        elif TF_WEIGHTS_NAME in present:
            path = directory / TF_WEIGHTS_NAME
            info = model.load_tf_weights(read_tf_h5(path), str(path), ignore_mismatched_sizes)
        elif pickled:
            raise CheckpointError(
                f"{directory}: no {TF_WEIGHTS_NAME} or {SAFE_WEIGHTS_NAME}, only PyTorch pickles ({sorted(pickled)[0]}); "
                "pass from_pt=True to load those"
            )
        else:
            raise CheckpointError(
                f"{directory}: no weights found (looked for {TF_WEIGHTS_NAME}, {SAFE_WEIGHTS_NAME}, {WEIGHTS_NAME})"
            )
        model.loading_info = info
        return (model, info) if output_loading_info else model

    def _load_torch_checkpoint(self, directory: Path, ignore_mismatched_sizes: bool) -> LoadingInfo:
        """Through the PyTorch twin: its name map, prefix reconciliation, checks and head init."""
        import torch

        torch_model, info = self.torch_class.from_pretrained(
            directory, config=self.config, dtype=torch.float32, ignore_mismatched_sizes=ignore_mismatched_sizes,
            output_loading_info=True,
        )
        state = {k: v.detach().numpy() for k, v in torch_model.checkpoint_state_dict().items()}
        self.load_checkpoint_state(state, str(directory))
        return info

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        max_shard_size: int | str = "5GB",
        **_: Any,
    ) -> None:
        """Write config.json and the weights: model.safetensors under PyTorch names (lamina's and
        transformers' PyTorch classes, and transformers 4.x's TF classes, load it), or with
        `safe_serialization=False` transformers' TF file, tf_model.h5."""
        import torch

        self.config.architectures = [self.torch_class.__name__]
        self.config.dtype = "float32"
        with atomic_directory(save_directory) as tmp:
            self.config.save_pretrained(tmp)
            if safe_serialization:
                state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.checkpoint_state().items()}
                write_weights(state, tmp, max_shard_size, safe_serialization=True)
            else:
                write_tf_h5(tmp / TF_WEIGHTS_NAME, self.tf_weights(), self.name, keras.__version__)
        stale = Path(save_directory) / TF_WEIGHTS_NAME
        if safe_serialization and stale.is_file():
            stale.unlink()  # an older tf_model.h5 must not shadow the new weights


def _assign(entry: Entry, value: np.ndarray, label: str, where: str) -> None:
    """Shapes compared in PyTorch layout."""
    if tuple(value.shape) != tuple(entry.variable.shape):
        raise CheckpointError(f"{where}: {label} has shape {tuple(value.shape)}, expected {tuple(entry.variable.shape)}")
    entry.variable.assign(value)

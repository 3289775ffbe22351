"""The base configuration: documented defaults, validation and the `config.json` round trip.

A family config declares its fields as annotated class attributes with their defaults, the way
transformers 5 does. Unknown keys found in a `config.json` are kept as attributes and written back.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch

from .errors import ConfigError

CONFIG_NAME = "config.json"
# labels a config may name: `num_labels` builds its id2label map eagerly, so a file asking for 10**12
# would hang the load
MAX_LABELS = 1 << 20
# layers a config may ask for: configs build per-layer lists (`layer_types`) before anything else
# checks them, so a file asking for 10**8 would hang the load; published models have at most a few
# hundred
MAX_LAYERS = 1 << 16
_LABEL_ID = re.compile(r"-?[0-9]{1,18}")
# attributes of the instance itself, which a config.json key must not replace
_INTERNAL_ATTRIBUTES = ("_extra_keys", "_legacy_dtype_key")

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(value: Any, argument: str = "dtype") -> torch.dtype | None:
    """`torch.float16`, `"float16"`, `"torch.float16"` → `torch.float16`; `None` and `"auto"` pass as None."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        if name in _DTYPES:
            return _DTYPES[name]
    raise ConfigError(f"{argument}: expected a torch dtype or one of {sorted(_DTYPES)}, found {value!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class PretrainedConfig:
    """Base of every lamina config: the fields transformers' `PreTrainedConfig` shares across models."""

    model_type: ClassVar[str] = ""
    # alternative spellings → the canonical attribute (GPT-2's n_embd → hidden_size, …)
    attribute_map: ClassVar[dict[str, str]] = {}

    # fields shared by every model, with transformers' defaults
    return_dict: bool = True
    output_hidden_states: bool = False
    output_attentions: bool = False
    architectures: list[str] | None = None
    problem_type: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    tokenizer_class: str | None = None
    chunk_size_feed_forward: int = 0
    is_encoder_decoder: bool = False

    _PROBLEM_TYPES: ClassVar[tuple[str, ...]] = (
        "regression",
        "single_label_classification",
        "multi_label_classification",
    )

    def __init__(self, **kwargs: Any) -> None:
        self._attn_implementation: str | None = kwargs.pop("attn_implementation", None)
        # old and new spellings of the dtype; remember which one the file used to write it back alike
        self._legacy_dtype_key = "torch_dtype" in kwargs and "dtype" not in kwargs
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        self.dtype = dtype if dtype is not None else torch_dtype
        if isinstance(self.dtype, torch.dtype):
            self.dtype = dtype_name(self.dtype)
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        kwargs.pop("transformers_version", None)
        kwargs.pop("model_type", None)

        for alias, canonical in self.attribute_map.items():
            if alias in kwargs:
                kwargs[canonical] = kwargs.pop(alias)
        for name, default in self._declared_fields().items():
            value = kwargs.pop(name) if name in kwargs else copy.deepcopy(default)
            object.__setattr__(self, name, value)
        # keys this class does not declare are kept and written back unchanged, unless they would
        # replace one of its methods or properties (`validate`, `to_dict`, `use_return_dict`)
        for name in kwargs:
            if hasattr(type(self), name) or name in _INTERNAL_ATTRIBUTES:
                raise ConfigError(f"{name}: not a configuration key (it names an attribute of {type(self).__name__})")
        self._extra_keys = list(kwargs)
        for name, value in kwargs.items():
            object.__setattr__(self, name, value)

        if num_labels is not None:
            in_range = is_integer(num_labels) and 0 <= num_labels <= MAX_LABELS
            require(in_range, "num_labels", f"an integer in [0, {MAX_LABELS}]", num_labels)
        if label2id is not None:
            require(isinstance(label2id, dict), "label2id", "an object of label → id", label2id)
        if id2label is not None:
            require(isinstance(id2label, dict) and all(_is_label_id(k) for k in id2label), "id2label",
                    "an object of integer id → label", id2label)
            self.id2label = {int(k): v for k, v in id2label.items()}
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        if num_labels is not None and num_labels != len(self.id2label):
            raise ConfigError(f"num_labels is {num_labels} but id2label has {len(self.id2label)} entries")
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        layers = getattr(self, "num_hidden_layers", None)
        if layers is not None:
            require(is_integer(layers) and 0 <= layers <= MAX_LAYERS, "num_hidden_layers",
                    f"an integer in [0, {MAX_LAYERS}]", layers)
        self.__post_init__()
        self.validate()

    @classmethod
    def _declared_fields(cls) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name in getattr(klass, "__annotations__", {}):
                if name.startswith("_") or name in ("model_type", "attribute_map"):
                    continue
                if name in vars(klass):
                    fields[name] = vars(klass)[name]
        return fields

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: resolve the aliases of attribute_map
        alias_map = type(self).attribute_map
        if name in alias_map:
            return getattr(self, alias_map[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, type(self).attribute_map.get(name, name), value)

    def __post_init__(self) -> None:
        """Derived defaults (e.g. `num_key_value_heads` from the head count); subclasses extend it."""

    def validate(self) -> None:
        """Raise `ConfigError` naming the field when a value is out of range; subclasses extend it."""
        if self.problem_type is not None and self.problem_type not in self._PROBLEM_TYPES:
            raise ConfigError(f"problem_type: expected one of {self._PROBLEM_TYPES} or None, found {self.problem_type!r}")
        if self.dtype is not None:
            resolve_dtype(self.dtype, "dtype")

    # -- labels --------------------------------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def torch_dtype(self) -> str | None:
        return self.dtype

    # -- serialisation -------------------------------------------------------------------------

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The config of the text model: this one (transformers' hook for multimodal configs, which
        training tools call on every model)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for name in self._declared_fields():
            out[name] = copy.deepcopy(getattr(self, name))
        for name in self._extra_keys:
            out[name] = copy.deepcopy(getattr(self, name))
        out["id2label"] = dict(self.id2label)
        out["label2id"] = dict(self.label2id)
        if self.dtype is not None:
            out["torch_dtype" if self._legacy_dtype_key else "dtype"] = self.dtype
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(self.to_json_string())

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> PretrainedConfig:
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_config_json(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> PretrainedConfig:
        from .hub import resolve_model_dir

        directory = resolve_model_dir(path)
        data = read_config_json(directory / CONFIG_NAME)
        if cls.model_type and data.get("model_type") not in (None, cls.model_type):
            raise ConfigError(
                f"{directory / CONFIG_NAME}: model_type is {data.get('model_type')!r}, "
                f"but {cls.__name__} expects {cls.model_type!r}"
            )
        return cls.from_dict(data, **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if not isinstance(data.get("model_type", ""), str):
        raise ConfigError(f"{path}: model_type: expected a string, found {data['model_type']!r:.80}")
    return data


def require(condition: bool, field: str, expected: str, found: Any) -> None:
    """Raise a `ConfigError` naming `field` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: expected {expected}, found {found!r:.200}")


def is_integer(value: Any) -> bool:
    """An int that is not a bool (JSON's `true` and a GGUF boolean read as ints otherwise)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or float, not a bool, neither infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_label_id(key: Any) -> bool:
    """An id2label key: an int, or its decimal spelling (JSON keys are strings)."""
    return is_integer(key) or (isinstance(key, str) and _LABEL_ID.fullmatch(key) is not None)

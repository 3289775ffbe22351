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
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import torch

from .errors import ConfigError
from .hub import resolve_model_dir, take_hub_arguments

CONFIG_NAME = "config.json"
# labels a config may name: `num_labels` builds its id2label map eagerly, so a file asking for 10**12
# would hang the load
MAX_LABELS = 1 << 20
# layers a config may ask for: configs build per-layer lists (`layer_types`) before anything else
# checks them, so a file asking for 10**8 would hang the load; published models have at most a few
# hundred
MAX_LAYERS = 1 << 16
# a dimension, vocabulary or position count: what torch's 32-bit index kernels can address; no
# published model comes near it, and a file asking for more describes nothing that could run
MAX_SIZE = (1 << 31) - 1
# what a torch integer tensor holds
MAX_INT64 = (1 << 63) - 1
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


@dataclass(frozen=True)
class Bounds:
    """The range an annotated number must lie in: `Annotated[int, Bounds(1, MAX_SIZE)]`.
    `low_open` excludes `low` itself (an epsilon must be above 0, not 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        if self.high is None:
            return f"> {self.low}" if self.low_open else f">= {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"


# The field types configs declare. A size is positive and addressable; a token id may be negative
# (-1 means "none" in many files) but must fit a tensor; probabilities are dropout rates.
Size = Annotated[int, Bounds(1, MAX_SIZE)]
Layers = Annotated[int, Bounds(1, MAX_LAYERS)]
# a sliding window: any length a position can reach (caches hold only the slots a run needs)
Window = Annotated[int, Bounds(1, MAX_INT64)]
Count = Annotated[int, Bounds(0, MAX_SIZE)]
TokenId = Annotated[int, Bounds(-MAX_SIZE, MAX_SIZE)]
Probability = Annotated[float, Bounds(0.0, 1.0)]
Positive = Annotated[float, Bounds(0.0, None, low_open=True)]
NonNegative = Annotated[float, Bounds(0.0)]


def check_field(name: str, annotation: Any, value: Any) -> None:
    """Raise a `ConfigError` naming `name`, the expected type and the value found unless `value`
    is of the (evaluated) type `annotation`. Booleans are not integers; integers are numbers;
    numbers are finite; lists and dicts are checked entry by entry."""
    require(_matches(annotation, value), name, _expected(annotation), value)


def check_fields(owner: Any, annotations: dict[str, Any], prefix: str = "") -> None:
    """`check_field` for each `name: annotation` on the attributes of `owner`."""
    for name, annotation in annotations.items():
        check_field(prefix + name, annotation, getattr(owner, name))


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotations of `cls` and its bases (`Annotated` bounds kept)."""
    return typing.get_type_hints(cls, include_extras=True)


def _matches(annotation: Any, value: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Annotated:
        return _matches(args[0], value) and value in args[1]
    if origin in (Union, types.UnionType):
        return any(_matches(arg, value) for arg in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return is_integer(value) and -MAX_INT64 - 1 <= value <= MAX_INT64
    if annotation is float:
        return is_finite_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or origin is list:
        return isinstance(value, list) and all(_matches(args[0], item) for item in value if args)
    if annotation is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(
            _matches(args[0], key) and _matches(args[1], item) for key, item in value.items()))
    return isinstance(value, annotation)


def _entry(annotation: Any) -> str:
    """An entry's description, in parentheses where it has alternatives."""
    described = _expected(annotation)
    return f"({described})" if " or " in described else described


def _expected(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin is Annotated:
        return f"{_expected(args[0])} {args[1].describe()}"
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in args)
    if origin is Literal:
        return f"one of {list(args)}"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", Any: "anything"}
    if annotation in names:
        return names[annotation]
    if annotation is list or origin is list:
        return f"a list of {_entry(args[0])}" if args else "a list"
    if annotation is dict or origin is dict:
        return f"an object of {_entry(args[0])} → {_entry(args[1])}" if args else "an object"
    return getattr(annotation, "__name__", str(annotation))


class PretrainedConfig:
    """Base of every lamina config: the fields transformers' `PreTrainedConfig` shares across models."""

    model_type: ClassVar[str] = ""
    # alternative spellings → the canonical attribute (GPT-2's n_embd → hidden_size, …)
    attribute_map: ClassVar[dict[str, str]] = {}
    # what `__init__` takes besides the declared fields
    init_keywords: ClassVar[tuple[str, ...]] = (
        "num_labels", "id2label", "label2id", "dtype", "torch_dtype", "attn_implementation",
    )

    # fields shared by every model, with transformers' defaults
    return_dict: bool = True
    output_hidden_states: bool = False
    output_attentions: bool = False
    architectures: list[str] | None = None
    problem_type: str | None = None
    pad_token_id: TokenId | None = None
    bos_token_id: TokenId | None = None
    eos_token_id: TokenId | list[TokenId] | None = None
    tie_word_embeddings: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    tokenizer_class: str | None = None
    chunk_size_feed_forward: Count = 0
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
        # replace one of its methods or properties (`validate`, `to_dict`, `use_return_dict`) or
        # what a subclass recorded before calling this (`_legacy_rope`)
        for name in kwargs:
            if hasattr(type(self), name) or name in _INTERNAL_ATTRIBUTES or name in self.__dict__:
                raise ConfigError(f"{name}: not a configuration key (it names an attribute of {type(self).__name__})")
        self._extra_keys = list(kwargs)
        for name, value in kwargs.items():
            object.__setattr__(self, name, value)
        # types and ranges first: what follows computes with these values
        check_fields(self, self._field_types())

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
        self.__post_init__()
        self.validate()

    @classmethod
    def _declared_fields(cls) -> dict[str, Any]:
        hints = field_types(cls)
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name in getattr(klass, "__annotations__", {}):
                if name.startswith("_") or typing.get_origin(hints.get(name)) is ClassVar:
                    continue
                if name in vars(klass):
                    fields[name] = vars(klass)[name]
        return fields

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        """Each declared field's annotation, evaluated: what `__init__` checks its value against."""
        hints = field_types(cls)
        return {name: hints[name] for name in cls._declared_fields()}

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
        vocab = getattr(self, "vocab_size", None)
        if vocab is not None and self.pad_token_id is not None:
            # the padding row of the embedding: torch refuses one outside the table (as the
            # reference's model does, after its config accepted it)
            require(-vocab <= self.pad_token_id < vocab, "pad_token_id", f"None or an id in [-{vocab}, {vocab})",
                    self.pad_token_id)

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
        """The config of `data` (a config.json's object) with `overrides` replacing its values. An
        override must name a field of this config or a key of `data`: anything else is a
        misspelling or a loading argument that would otherwise be written to config.json."""
        known = set(data) | set(cls._declared_fields()) | set(cls.attribute_map) | set(cls.init_keywords)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unexpected keyword arguments {unknown}: neither loading arguments nor fields of "
                              f"{cls.__name__}")
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_config_json(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> PretrainedConfig:
        """The config in `path` (a directory or a Hub id; the Hub's loading arguments, `token`,
        `revision`, …, go to the download) with `overrides` replacing its values."""
        drop_inert_arguments(overrides)
        directory = resolve_model_dir(path, weights=False, **take_hub_arguments(overrides))
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


# transformers' loading arguments that change nothing in lamina: it never runs a repository's code,
# always loads with little memory, and the files found decide the format
INERT_LOADING_ARGUMENTS = ("trust_remote_code", "low_cpu_mem_usage", "from_tf", "from_pt")


def drop_inert_arguments(kwargs: dict[str, Any]) -> None:
    for name in INERT_LOADING_ARGUMENTS:
        kwargs.pop(name, None)


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
    """An int or float, not a bool, neither infinite nor NaN (nor an int past float's range)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_label_id(key: Any) -> bool:
    """An id2label key: an int, or its decimal spelling (JSON keys are strings)."""
    return is_integer(key) or (isinstance(key, str) and _LABEL_ID.fullmatch(key) is not None)

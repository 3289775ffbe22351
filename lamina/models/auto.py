"""Auto classes: pick the family class from a config's `model_type` (or `architectures`).

The families and the task each Auto class dispatches come from `registry.FAMILIES`. Modules are
imported only when a class of theirs is asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..config import CONFIG_NAME, PretrainedConfig, drop_inert_arguments, read_config_json
from ..errors import ConfigError, UnsupportedError
from ..hub import locate_checkpoint, take_hub_arguments
from ..modeling import FORMAT_LOADERS, PreTrainedModel
from .registry import FAMILIES, Family


def _import(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def family_of(model_type: str | None, architectures: list[str] | None, where: str) -> Family:
    """The family of `model_type`, else of the first of `architectures` one of its classes is named."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    for arch in architectures or []:
        for family in FAMILIES.values():
            if arch in family.model_classes():
                return family
    raise ConfigError(
        f"{where}: unknown model_type {model_type!r} (architectures {architectures}); "
        f"lamina supports {sorted(FAMILIES)}"
    )


def _config_dict(path: str | os.PathLike, gguf_file: str | None, hub: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The config.json object of a model (or what a format loader reads for it) and where it was."""
    found_at = locate_checkpoint(path, gguf_file, **hub)
    for loader in FORMAT_LOADERS:
        found = loader(found_at)
        if found is not None:
            return found[0], str(found_at)
    return read_config_json(found_at / CONFIG_NAME), str(found_at / CONFIG_NAME)


class AutoConfig:
    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PretrainedConfig:
        family = family_of(model_type, None, "AutoConfig.for_model")
        return _import(family.module, family.config_class)(**kwargs)

    @staticmethod
    def from_pretrained(path: str | os.PathLike, **overrides: Any) -> PretrainedConfig:
        drop_inert_arguments(overrides)
        data, where = _config_dict(path, overrides.pop("gguf_file", None), take_hub_arguments(overrides))
        family = family_of(data.get("model_type"), data.get("architectures"), where)
        return _import(family.module, family.config_class).from_dict(data, **overrides)


class _AutoModel:
    """Dispatches `from_pretrained` / `from_config` to the family's class for `task`."""

    task: str

    @classmethod
    def _class_for(cls, config: PretrainedConfig | dict[str, Any], where: str) -> type[PreTrainedModel]:
        if isinstance(config, PretrainedConfig):
            model_type, architectures = config.model_type, config.architectures
        else:
            model_type, architectures = config.get("model_type"), config.get("architectures")
        family = family_of(model_type, architectures, where)
        if cls.task not in family.tasks:
            raise UnsupportedError(
                f"{where}: {model_type!r} has no {cls.__name__} class (it offers {sorted(family.tasks)})"
            )
        return _import(family.module, family.class_name(cls.task))

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        return cls._class_for(config, type(config).__name__).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *args: Any, **kwargs: Any) -> PreTrainedModel:
        config = kwargs.get("config")
        if config is None:
            # the class's from_pretrained takes the same loading arguments again: read, not removed
            data, where = _config_dict(path, kwargs.get("gguf_file"), take_hub_arguments(dict(kwargs)))
            return cls._class_for(data, where).from_pretrained(path, *args, **kwargs)
        return cls._class_for(config, str(path)).from_pretrained(path, *args, **kwargs)


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForCausalLM(_AutoModel):
    task = "causal_lm"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence_classification"


class AutoModelForTokenClassification(_AutoModel):
    task = "token_classification"


class AutoModelForQuestionAnswering(_AutoModel):
    task = "question_answering"


class AutoModelForMaskedLM(_AutoModel):
    task = "masked_lm"


class AutoModelForPreTraining(_AutoModel):
    task = "pretraining"


class AutoModelForNextSentencePrediction(_AutoModel):
    task = "next_sentence_prediction"


class AutoModelForMultipleChoice(_AutoModel):
    task = "multiple_choice"

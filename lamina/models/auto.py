"""Auto classes: pick the family class from a config's `model_type` (or `architectures`).

Each family registers one row: its module, config class and the class of each task it offers.
Modules are imported only when a class of theirs is asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..config import CONFIG_NAME, PretrainedConfig, drop_inert_arguments, read_config_json
from ..errors import ConfigError, UnsupportedError
from ..hub import locate_checkpoint, take_hub_arguments
from ..modeling import FORMAT_LOADERS, PreTrainedModel

DECODER_TASKS = {
    "base": "Model",
    "causal_lm": "ForCausalLM",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
    "question_answering": "ForQuestionAnswering",
}


def family(module: str, prefix: str, tasks: dict[str, str] = DECODER_TASKS, **extra: str) -> tuple[str, str, dict[str, str]]:
    """A registry row: `module`, `{prefix}Config`, and `{prefix}{suffix}` per task (+ explicit extras)."""
    return module, f"{prefix}Config", {**{task: prefix + suffix for task, suffix in tasks.items()}, **extra}


# model_type → (module, config class, {task: class name})
REGISTRY: dict[str, tuple[str, str, dict[str, str]]] = {
    "mistral": family("lamina.models.mistral", "Mistral"),
    "ministral": family("lamina.models.ministral", "Ministral"),
    "mixtral": family("lamina.models.mixtral", "Mixtral"),
    "llama": family("lamina.models.llama", "Llama"),
    "qwen2": family("lamina.models.llama", "Qwen2"),
    "mega": family("lamina.models.mega", "Mega", {"base": "Model", "causal_lm": "ForCausalLM", "masked_lm": "ForMaskedLM", "sequence_classification": "ForSequenceClassification", "multiple_choice": "ForMultipleChoice", "token_classification": "ForTokenClassification", "question_answering": "ForQuestionAnswering"}),
    "gpt2": family("lamina.models.gpt2", "GPT2", {"base": "Model", "causal_lm": "LMHeadModel", "sequence_classification": "ForSequenceClassification", "token_classification": "ForTokenClassification", "question_answering": "ForQuestionAnswering"}),
    "persimmon": family("lamina.models.persimmon", "Persimmon", {k: v for k, v in DECODER_TASKS.items() if k != "question_answering"}),
    "megatron-bert": family("lamina.models.megatron_bert", "MegatronBert", {**DECODER_TASKS, "masked_lm": "ForMaskedLM", "pretraining": "ForPreTraining", "next_sentence_prediction": "ForNextSentencePrediction", "multiple_choice": "ForMultipleChoice"}),
    "mobilebert": family("lamina.models.mobilebert", "MobileBert", {**{k: v for k, v in DECODER_TASKS.items() if k != "causal_lm"}, "masked_lm": "ForMaskedLM", "pretraining": "ForPreTraining", "next_sentence_prediction": "ForNextSentencePrediction", "multiple_choice": "ForMultipleChoice"}),
}


def _import(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _row(model_type: str | None, architectures: list[str] | None, where: str) -> tuple[str, str, dict[str, str]]:
    if model_type in REGISTRY:
        return REGISTRY[model_type]
    for arch in architectures or []:
        for row in REGISTRY.values():
            if arch in row[2].values():
                return row
    raise ConfigError(
        f"{where}: unknown model_type {model_type!r} (architectures {architectures}); lamina supports {sorted(REGISTRY)}"
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
        module, config_name, _ = _row(model_type, None, "AutoConfig.for_model")
        return _import(module, config_name)(**kwargs)

    @staticmethod
    def from_pretrained(path: str | os.PathLike, **overrides: Any) -> PretrainedConfig:
        drop_inert_arguments(overrides)
        data, where = _config_dict(path, overrides.pop("gguf_file", None), take_hub_arguments(overrides))
        module, config_name, _ = _row(data.get("model_type"), data.get("architectures"), where)
        return _import(module, config_name).from_dict(data, **overrides)


class _AutoModel:
    task = "base"

    @classmethod
    def _class_for(cls, config: PretrainedConfig | dict[str, Any], where: str) -> type[PreTrainedModel]:
        if isinstance(config, PretrainedConfig):
            model_type, architectures = config.model_type, config.architectures
        else:
            model_type, architectures = config.get("model_type"), config.get("architectures")
        module, _, tasks = _row(model_type, architectures, where)
        if cls.task not in tasks:
            raise UnsupportedError(f"{where}: {model_type!r} has no {cls.__name__} class (it offers {sorted(tasks)})")
        return _import(module, tasks[cls.task])

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


def _auto(name: str, task: str) -> type[_AutoModel]:
    return type(name, (_AutoModel,), {"task": task, "__doc__": f"Dispatches to the family's {task} class."})


AutoModel = _auto("AutoModel", "base")
AutoModelForCausalLM = _auto("AutoModelForCausalLM", "causal_lm")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", "sequence_classification")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", "token_classification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "question_answering")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM", "masked_lm")
AutoModelForPreTraining = _auto("AutoModelForPreTraining", "pretraining")
AutoModelForNextSentencePrediction = _auto("AutoModelForNextSentencePrediction", "next_sentence_prediction")
AutoModelForMultipleChoice = _auto("AutoModelForMultipleChoice", "multiple_choice")

"""lamina: the transformers API for Mistral, Ministral, Mixtral, Persimmon, GPT-2, MegatronBERT,
MobileBERT and MEGA, on one compact PyTorch code base.

Names are imported lazily, on first use, so `import lamina` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


from .models.registry import AUTO_CLASSES, FAMILIES


def _family(module: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, module)


# public name → module that defines it; the model families' names come from their registry
_EXPORTS: dict[str, str] = {
    **_family("lamina.errors", "LaminaError", "ConfigError", "CheckpointError", "TokenizerError", "InputError",
              "SecurityError", "UnsupportedError"),
    **_family("lamina.config", "PretrainedConfig"),
    **_family("lamina.modeling", "PreTrainedModel"),
    **_family("lamina.cache", "Cache", "make_cache"),
    **_family("lamina.generation", "GenerationConfig", "GenerationMixin", "LogitsProcessorList", "StoppingCriteria",
              "StoppingCriteriaList"),
    **_family("lamina.generation.streamers", "TextStreamer", "TextIteratorStreamer"),
    **_family("lamina.models.auto", "AutoConfig", *AUTO_CLASSES.values()),
    **{name: module for family in FAMILIES.values() for name, module in family.exports().items()},
    **_family("lamina.quantization", "quantize", "QuantizationConfig", "BitsAndBytesConfig"),
    **_family("lamina.pipelines", "pipeline", "Pipeline", "fill_mask", "TextGenerationPipeline", "FillMaskPipeline",
              "QuestionAnsweringPipeline", "TokenClassificationPipeline", "TextClassificationPipeline",
              "FeatureExtractionPipeline", "ZeroShotClassificationPipeline"),
    **_family("lamina.tokenizers.mluke", "MLukeTokenizer"),
    **_family("lamina.tokenizers", "AutoTokenizer", "BatchEncoding", "PreTrainedTokenizer", "PreTrainedTokenizerFast",
              "LlamaTokenizer", "LlamaTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast", "BertTokenizer",
              "BertTokenizerFast", "MobileBertTokenizer", "MobileBertTokenizerFast", "PersimmonTokenizer",
              "IncrementalDetokenizer"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lamina' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

"""lamina: the transformers API for Mistral, Ministral, Mixtral, Persimmon, GPT-2, MegatronBERT,
MobileBERT and MEGA, on one compact PyTorch code base.

Names are imported lazily, on first use, so `import lamina` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def _family(module: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, module)


def _decoder_family(module: str, prefix: str) -> dict[str, str]:
    suffixes = ("Config", "Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
    return _family(module, *(prefix + s for s in suffixes))


# public name → module that defines it
_EXPORTS: dict[str, str] = {
    **_family("lamina.errors", "LaminaError", "ConfigError", "CheckpointError", "TokenizerError", "InputError",
              "SecurityError", "UnsupportedError"),
    **_family("lamina.config", "PretrainedConfig"),
    **_family("lamina.modeling", "PreTrainedModel"),
    **_family("lamina.cache", "Cache", "make_cache"),
    **_family("lamina.generation", "GenerationConfig", "GenerationMixin", "LogitsProcessorList", "StoppingCriteria",
              "StoppingCriteriaList"),
    **_family("lamina.generation.streamers", "TextStreamer", "TextIteratorStreamer"),
    **_family("lamina.models.auto", "AutoConfig", "AutoModel", "AutoModelForCausalLM",
              "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModelForQuestionAnswering",
              "AutoModelForMaskedLM", "AutoModelForPreTraining", "AutoModelForNextSentencePrediction",
              "AutoModelForMultipleChoice"),
    **_decoder_family("lamina.models.mistral", "Mistral"),
    **_decoder_family("lamina.models.ministral", "Ministral"),
    **_decoder_family("lamina.models.mixtral", "Mixtral"),
    **_decoder_family("lamina.models.llama", "Llama"),
    **_decoder_family("lamina.models.llama", "Qwen2"),
    **_family("lamina.quantization", "quantize", "QuantizationConfig", "BitsAndBytesConfig"),
    **_family("lamina.models.mega", "MegaConfig", "MegaModel", "MegaForCausalLM", "MegaForMaskedLM", "MegaForSequenceClassification", "MegaForMultipleChoice", "MegaForTokenClassification", "MegaForQuestionAnswering"),
    **_family("lamina.models.gpt2", "GPT2Config", "GPT2Model", "GPT2LMHeadModel", "GPT2DoubleHeadsModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification", "GPT2ForQuestionAnswering"),
    **_family("lamina.models.persimmon", "PersimmonConfig", "PersimmonModel", "PersimmonForCausalLM", "PersimmonForSequenceClassification", "PersimmonForTokenClassification"),
    **_family("lamina.models.megatron_bert", *("MegatronBert" + s for s in ("Config", "Model", "ForMaskedLM", "ForCausalLM", "ForNextSentencePrediction", "ForPreTraining", "ForSequenceClassification", "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"))),
    **_family("lamina.models.mobilebert", *("MobileBert" + s for s in ("Config", "Model", "ForMaskedLM", "ForNextSentencePrediction", "ForPreTraining", "ForSequenceClassification", "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"))),
    **_family("lamina.tf.mobilebert", *("TFMobileBert" + s for s in ("Model", "ForMaskedLM", "ForNextSentencePrediction", "ForPreTraining", "ForSequenceClassification", "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"))),
    **_family("lamina.pipelines.fill_mask", "fill_mask"),
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

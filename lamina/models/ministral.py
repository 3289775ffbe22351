"""Ministral: Mistral with a per-layer choice of full or sliding-window attention (`layer_types`)."""

from __future__ import annotations

from .decoder import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
)
from .decoder_config import llama_like_spec
from .mistral import MistralConfig


class MinistralConfig(MistralConfig):
    model_type = "ministral"

    layer_types: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer_types is None:
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            self.layer_types = [kind] * self.num_hidden_layers


class MinistralModel(DecoderModel):
    config_class = MinistralConfig

    @classmethod
    def spec(cls, config: MinistralConfig) -> DecoderSpec:
        return llama_like_spec(config)


class MinistralForCausalLM(DecoderForCausalLM, base=MinistralModel):
    pass


class MinistralForSequenceClassification(DecoderForSequenceClassification, base=MinistralModel):
    pass


class MinistralForTokenClassification(DecoderForTokenClassification, base=MinistralModel):
    pass


class MinistralForQuestionAnswering(DecoderForQuestionAnswering, base=MinistralModel, prefix="transformer"):
    pass

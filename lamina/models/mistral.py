"""Mistral: the decoder with grouped-query attention and a sliding window on every layer."""

from __future__ import annotations

from .decoder import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
)
from ..config import Layers, NonNegative, Positive, Probability, Size, TokenId, Window
from ..layers.mlp import Activation
from .decoder_config import DecoderConfig, llama_like_spec


class MistralConfig(DecoderConfig):
    model_type = "mistral"

    vocab_size: Size = 32000
    hidden_size: Size = 4096
    intermediate_size: Size = 14336
    num_hidden_layers: Layers = 32
    num_attention_heads: Size = 32
    num_key_value_heads: Size | None = 8
    head_dim: Size | None = None
    hidden_act: Activation = "silu"
    max_position_embeddings: Size = 4096 * 32
    initializer_range: NonNegative = 0.02
    rms_norm_eps: Positive = 1e-6
    use_cache: bool = True
    pad_token_id: TokenId | None = None
    bos_token_id: TokenId | None = 1
    eos_token_id: TokenId | list[TokenId] | None = 2
    tie_word_embeddings: bool = False
    sliding_window: Window | None = 4096
    attention_dropout: Probability = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dim is None and type(self) is MistralConfig:
            # the reference fills head_dim in for Mistral only (Ministral and Mixtral keep None)
            self.head_dim = self.hidden_size // self.num_attention_heads


class MistralModel(DecoderModel):
    config_class = MistralConfig

    @classmethod
    def spec(cls, config: MistralConfig) -> DecoderSpec:
        return llama_like_spec(config)


class MistralForCausalLM(DecoderForCausalLM, base=MistralModel):
    pass


class MistralForSequenceClassification(DecoderForSequenceClassification, base=MistralModel):
    pass


class MistralForTokenClassification(DecoderForTokenClassification, base=MistralModel):
    pass


class MistralForQuestionAnswering(DecoderForQuestionAnswering, base=MistralModel):
    pass

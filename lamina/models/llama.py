"""Llama and Qwen2 on the same decoder: real Llama-architecture checkpoints (SmolLM2, …) run as is.
Llama is Mistral without a window (plus optional biases); Qwen2 adds q/k/v biases."""

from __future__ import annotations

from .decoder import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
)
from ..config import Count, Layers, NonNegative, Positive, Probability, Size, TokenId, Window
from ..layers.mlp import Activation
from .decoder_config import DecoderConfig, llama_like_spec


class LlamaConfig(DecoderConfig):
    model_type = "llama"

    vocab_size: Size = 32000
    hidden_size: Size = 4096
    intermediate_size: Size = 11008
    num_hidden_layers: Layers = 32
    num_attention_heads: Size = 32
    num_key_value_heads: Size | None = None
    head_dim: Size | None = None
    hidden_act: Activation = "silu"
    max_position_embeddings: Size = 2048
    initializer_range: NonNegative = 0.02
    rms_norm_eps: Positive = 1e-6
    use_cache: bool = True
    pad_token_id: TokenId | None = None
    bos_token_id: TokenId | None = 1
    eos_token_id: TokenId | list[TokenId] | None = 2
    pretraining_tp: Size = 1
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: Probability = 0.0
    mlp_bias: bool = False


class Qwen2Config(DecoderConfig):
    model_type = "qwen2"

    vocab_size: Size = 151936
    hidden_size: Size = 4096
    intermediate_size: Size = 22016
    num_hidden_layers: Layers = 32
    num_attention_heads: Size = 32
    num_key_value_heads: Size | None = 32
    head_dim: Size | None = None
    hidden_act: Activation = "silu"
    max_position_embeddings: Size = 32768
    initializer_range: NonNegative = 0.02
    rms_norm_eps: Positive = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    sliding_window: Window | None = 4096
    max_window_layers: Count = 28
    layer_types: list[str] | None = None
    attention_dropout: Probability = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.use_sliding_window:
            self.sliding_window = None
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers else "full_attention"
                for i in range(self.num_hidden_layers)
            ]


class LlamaModel(DecoderModel):
    config_class = LlamaConfig

    @classmethod
    def spec(cls, config: LlamaConfig) -> DecoderSpec:
        return llama_like_spec(
            config, attention_bias=config.attention_bias, output_bias=config.attention_bias, mlp_bias=config.mlp_bias
        )


class Qwen2Model(DecoderModel):
    config_class = Qwen2Config

    @classmethod
    def spec(cls, config: Qwen2Config) -> DecoderSpec:
        return llama_like_spec(config, attention_bias=True)


class LlamaForCausalLM(DecoderForCausalLM, base=LlamaModel):
    pass


class LlamaForSequenceClassification(DecoderForSequenceClassification, base=LlamaModel):
    pass


class LlamaForTokenClassification(DecoderForTokenClassification, base=LlamaModel):
    pass


class LlamaForQuestionAnswering(DecoderForQuestionAnswering, base=LlamaModel, prefix="transformer"):
    pass


class Qwen2ForCausalLM(DecoderForCausalLM, base=Qwen2Model):
    pass


class Qwen2ForSequenceClassification(DecoderForSequenceClassification, base=Qwen2Model):
    pass


class Qwen2ForTokenClassification(DecoderForTokenClassification, base=Qwen2Model):
    pass


class Qwen2ForQuestionAnswering(DecoderForQuestionAnswering, base=Qwen2Model, prefix="transformer"):
    pass

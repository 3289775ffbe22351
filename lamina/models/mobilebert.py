"""MobileBERT: a deep, thin BERT with bottlenecks.

Each layer squeezes the `hidden_size` stream to `intra_bottleneck_size` (`bottleneck.input`),
attends there (queries and keys from a shared bottleneck when `key_query_shared_bottleneck`),
runs `num_feedforward_networks` feed-forward blocks at the narrow width and widens back
(`output.bottleneck`). Norms are LayerNorm or the cheaper elementwise NoNorm. Word embeddings
are `embedding_size` wide; with `trigram_input` each token's embedding is concatenated with its
right and left neighbours' before the projection to `hidden_size`.

Module names are those of the transformers checkpoints, so the name map is empty.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Layers, NonNegative, PretrainedConfig, Positive, Probability, Size, TokenId, require
from ..layers.encoder import EncoderMask, EncoderSelfAttention, MaskedLMPredictions, Pooler, make_encoder_norm
from ..layers.mlp import Activation, activation
from ..outputs import BaseModelOutputWithPooling, MobileBertForPreTrainingOutput, finish
from .encoder import (
    EncoderForMaskedLM,
    EncoderForMultipleChoice,
    EncoderForNextSentencePrediction,
    EncoderForPreTraining,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)
from .forward import prepare_inputs, run_layer_stack

NORMALIZATION_TYPES = ("no_norm", "layer_norm")
# the reference builds some of its LayerNorms without passing layer_norm_eps
TORCH_DEFAULT_EPS = 1e-5


class MobileBertConfig(PretrainedConfig):
    model_type = "mobilebert"

    vocab_size: Size = 30522
    hidden_size: Size = 512
    num_hidden_layers: Layers = 24
    num_attention_heads: Size = 4
    intermediate_size: Size = 512
    hidden_act: Activation = "relu"
    hidden_dropout_prob: Probability = 0.0
    attention_probs_dropout_prob: Probability = 0.1
    max_position_embeddings: Size = 512
    type_vocab_size: Size = 2
    initializer_range: NonNegative = 0.02
    layer_norm_eps: Positive = 1e-12
    pad_token_id: TokenId | None = 0
    embedding_size: Size = 128
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: Size = 128
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    num_feedforward_networks: Size = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = True
    classifier_dropout: Probability | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        # derived, like the reference: the width attention and the feed-forward blocks work at
        self.true_hidden_size = self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size
        if "true_hidden_size" not in self._extra_keys:
            self._extra_keys.append("true_hidden_size")

    def validate(self) -> None:
        super().validate()
        require(self.normalization_type in NORMALIZATION_TYPES, "normalization_type",
                f"one of {NORMALIZATION_TYPES}", self.normalization_type)
        require(self.true_hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                f"a divisor of the attention width {self.true_hidden_size}", self.num_attention_heads)
        require(self.embedding_size <= self.hidden_size, "embedding_size",
                f"at most hidden_size ({self.hidden_size})", self.embedding_size)


def _norm(config: MobileBertConfig, size: int, eps: float | None = None) -> nn.Module:
    return make_encoder_norm(config.normalization_type, size, config.layer_norm_eps if eps is None else eps)


class MobileBertEmbeddings(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.trigram_input = config.trigram_input
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        width = config.embedding_size * (3 if config.trigram_input else 1)
        self.embedding_transformation = nn.Linear(width, config.hidden_size)
        self.project = config.trigram_input or config.embedding_size != config.hidden_size
        self.LayerNorm = _norm(config, config.hidden_size, TORCH_DEFAULT_EPS)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if self.trigram_input:
            # a padding token is no one's neighbour: zeroed like the sequence's ends, so padding a
            # row cannot change its last real token (the reference reads the pad embedding there)
            neighbours = inputs_embeds
            if attention_mask is not None:
                neighbours = inputs_embeds * attention_mask[..., None].to(inputs_embeds.dtype)
            following = F.pad(neighbours[:, 1:], (0, 0, 0, 1))
            preceding = F.pad(neighbours[:, :-1], (0, 0, 1, 0))
            inputs_embeds = torch.cat([following, inputs_embeds, preceding], dim=2)
        if self.project:
            inputs_embeds = self.embedding_transformation(inputs_embeds)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class NormedResidual(nn.Module):
    """`norm(dropout(dense(x)) + residual)`: every sub-layer output of MobileBERT."""

    def __init__(self, config: MobileBertConfig, in_features: int, out_features: int, eps: float | None = None,
                 dropout: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.LayerNorm = _norm(config, out_features, eps)
        self.dropout = config.hidden_dropout_prob if dropout else 0.0

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.dropout(self.dense(x), self.dropout, self.training) + residual)


class MobileBertAttention(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        width = config.true_hidden_size
        value_width = width if config.use_bottleneck_attention else config.hidden_size
        self.self = EncoderSelfAttention(
            config.num_attention_heads, width // config.num_attention_heads, (width, width, value_width),
            config.attention_probs_dropout_prob, config._attn_implementation,
        )
        self.output = NormedResidual(config, width, width, dropout=not config.use_bottleneck)


class MobileBertIntermediate(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.true_hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class FFNLayer(nn.Module):
    """One of the extra feed-forward blocks at the bottleneck width."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.intermediate = MobileBertIntermediate(config)
        self.output = NormedResidual(config, config.intermediate_size, config.true_hidden_size, dropout=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


class MobileBertOutput(nn.Module):
    """The last feed-forward output; with bottlenecks, widened back and added to the layer input."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.true_hidden_size)
        self.LayerNorm = _norm(config, config.true_hidden_size, TORCH_DEFAULT_EPS)
        self.dropout = 0.0 if config.use_bottleneck else config.hidden_dropout_prob
        self.bottleneck = NormedResidual(config, config.true_hidden_size, config.hidden_size) if config.use_bottleneck else None

    def forward(self, intermediate: torch.Tensor, attention_output: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
        out = self.LayerNorm(F.dropout(self.dense(intermediate), self.dropout, self.training) + attention_output)
        return out if self.bottleneck is None else self.bottleneck(out, layer_input)


class BottleneckLayer(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intra_bottleneck_size)
        self.LayerNorm = _norm(config, config.intra_bottleneck_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x))


class Bottleneck(nn.Module):
    """Narrows the layer input: returns (query input, key input, value input, residual input)."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.use_bottleneck_attention = config.use_bottleneck_attention
        self.input = BottleneckLayer(config)
        self.attention = BottleneckLayer(config) if config.key_query_shared_bottleneck else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        narrow = self.input(x)
        if self.use_bottleneck_attention:
            return narrow, narrow, narrow, narrow
        if self.attention is not None:
            shared = self.attention(x)
            return shared, shared, x, narrow
        return x, x, x, narrow


class MobileBertLayer(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.bottleneck = Bottleneck(config) if config.use_bottleneck else None
        self.attention = MobileBertAttention(config)
        self.ffn = nn.ModuleList(FFNLayer(config) for _ in range(config.num_feedforward_networks - 1))
        self.intermediate = MobileBertIntermediate(config)
        self.output = MobileBertOutput(config)

    def forward(self, hidden, masks, cache, need_weights):
        if self.bottleneck is not None:
            query, key, value, residual = self.bottleneck(hidden)
        else:
            query = key = value = residual = hidden
        attended, weights = self.attention.self(query, key, value, masks, cache, need_weights)
        out = self.attention.output(attended, residual)
        for ffn in self.ffn:
            out = ffn(out)
        return self.output(self.intermediate(out), out, hidden), weights


class MobileBertEncoder(nn.Module):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MobileBertLayer(config) for _ in range(config.num_hidden_layers))


class MobileBertModel(EncoderModel):
    """`forward(input_ids (batch, seq))` → last hidden state `(batch, seq, hidden)` and, with the
    pooler, the first token `(batch, hidden)` (through dense + tanh when `classifier_activation`)."""

    config_class = MobileBertConfig
    base_model_prefix = "mobilebert"

    def __init__(self, config: MobileBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = MobileBertEmbeddings(config)
        self.encoder = MobileBertEncoder(config)
        self.pooler = Pooler(config.hidden_size, config.classifier_activation) if add_pooling_layer else None
        self.post_init()

    @classmethod
    def masked_lm_predictions(cls, config: MobileBertConfig) -> MaskedLMPredictions:
        return MaskedLMPredictions(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps,
                                   embedding_size=config.embedding_size)

    @classmethod
    def classifier_dropout(cls, config: MobileBertConfig) -> float:
        return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_: Any,
    ):
        """`attention_mask (batch, seq)` is 1 for real tokens."""
        config = self.config
        inputs = prepare_inputs(
            self, input_ids, inputs_embeds, config.vocab_size, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict, position_ids=position_ids,
        )
        if token_type_ids is None:
            device = inputs.cache_position.device
            token_type_ids = torch.zeros(inputs.batch, inputs.seq, dtype=torch.long, device=device)

        masks = EncoderMask(attention_mask, inputs.cache_position, self.embeddings.position_embeddings.weight.dtype,
                            causal=False)
        hidden = self.embeddings(input_ids, token_type_ids, inputs.position_ids, inputs_embeds, attention_mask)
        hidden, all_hidden, (all_attentions,) = run_layer_stack(
            self, self.encoder.layer, hidden, (masks,), None, inputs.output_attentions, inputs.output_hidden_states
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            hidden_states=(*all_hidden, hidden) if inputs.output_hidden_states else None,
            attentions=tuple(all_attentions) if inputs.output_attentions else None,
        )
        return finish(output, inputs.return_dict, config)


class MobileBertForMaskedLM(EncoderForMaskedLM, base=MobileBertModel):
    pass


class MobileBertForPreTraining(EncoderForPreTraining, base=MobileBertModel):
    output_class = MobileBertForPreTrainingOutput


class MobileBertForNextSentencePrediction(EncoderForNextSentencePrediction, base=MobileBertModel):
    pass


class MobileBertForSequenceClassification(EncoderForSequenceClassification, base=MobileBertModel):
    pass


class MobileBertForMultipleChoice(EncoderForMultipleChoice, base=MobileBertModel):
    pass


class MobileBertForTokenClassification(EncoderForTokenClassification, base=MobileBertModel):
    pass


class MobileBertForQuestionAnswering(EncoderForQuestionAnswering, base=MobileBertModel):
    pass

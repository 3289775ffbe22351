"""MegatronBERT: BERT with the LayerNorm moved before each sub-layer (pre-norm) and one final norm.

Module names are those of the transformers checkpoints (`bert.encoder.layer.N.attention.ln`,
`cls.predictions.transform.dense`, …) except the attention's one fused `qkv` projection, which the
name map splits into the checkpoints' `query`, `key` and `value`. Positions are absolute, or
relative distances inside attention (`position_embedding_type` "relative_key" /
"relative_key_query", as transformers 4.x offered). As a decoder (`is_decoder=True`) the model is
causal and keeps a per-layer key/value cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..cache import Cache, make_cache
from ..checkpoints.namemap import Rule, concat
from ..config import Layers, NonNegative, PretrainedConfig, Positive, Probability, Size, TokenId, require
from ..errors import UnsupportedError
from ..generation import GenerationConfig, GenerationMixin
from ..layers.encoder import (
    POSITION_EMBEDDING_TYPES,
    EncoderHeads,
    EncoderMask,
    EncoderSelfAttention,
    MaskedLMPredictions,
    Pooler,
)
from ..layers.heads import causal_lm_loss
from ..layers.mlp import Activation, activation
from ..outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MegatronBertForPreTrainingOutput,
    finish,
)
from .encoder import (
    EncoderForMaskedLM,
    EncoderForMultipleChoice,
    EncoderForNextSentencePrediction,
    EncoderForPreTraining,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    _LanguageModelTask,
)
from .forward import prepare_inputs, run_layer_stack


class MegatronBertConfig(PretrainedConfig):
    model_type = "megatron-bert"

    vocab_size: Size = 29056
    hidden_size: Size = 1024
    num_hidden_layers: Layers = 24
    num_attention_heads: Size = 16
    intermediate_size: Size = 4096
    hidden_act: Activation = "gelu"
    hidden_dropout_prob: Probability = 0.1
    attention_probs_dropout_prob: Probability = 0.1
    max_position_embeddings: Size = 512
    type_vocab_size: Size = 2
    initializer_range: NonNegative = 0.02
    layer_norm_eps: Positive = 1e-12
    pad_token_id: TokenId | None = 0
    position_embedding_type: str = "absolute"
    use_cache: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                f"a multiple of num_attention_heads ({self.num_attention_heads})", self.hidden_size)
        require(self.position_embedding_type in POSITION_EMBEDDING_TYPES, "position_embedding_type",
                f"one of {POSITION_EMBEDDING_TYPES}", self.position_embedding_type)


class MegatronBertEmbeddings(nn.Module):
    """Word + token-type (+ absolute position) embeddings; no norm here, each layer norms its input."""

    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.absolute:
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(embeddings)


class DenseResidual(nn.Module):
    """`residual + dropout(dense(x))`, the output of each sub-layer."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.dropout(self.dense(x))


class MegatronBertAttention(nn.Module):
    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__()
        size = config.hidden_size
        self.ln = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.self = EncoderSelfAttention(
            config.num_attention_heads, size // config.num_attention_heads, (size, size, size),
            config.attention_probs_dropout_prob, config._attn_implementation,
            config.position_embedding_type, config.max_position_embeddings, fused=True,
        )
        self.output = DenseResidual(size, size, config.hidden_dropout_prob)

    def forward(self, hidden, masks, cache, need_weights):
        normed = self.ln(hidden)
        out, weights = self.self(normed, normed, normed, masks, cache, need_weights)
        return self.output(out, hidden), weights


class MegatronBertIntermediate(nn.Module):
    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class MegatronBertLayer(nn.Module):
    """x + attention(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__()
        self.attention = MegatronBertAttention(config)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = MegatronBertIntermediate(config)
        self.output = DenseResidual(config.intermediate_size, config.hidden_size, config.hidden_dropout_prob)

    def forward(self, hidden, masks, cache, need_weights):
        hidden, weights = self.attention(hidden, masks, cache, need_weights)
        return self.output(self.intermediate(self.ln(hidden)), hidden), weights


class MegatronBertEncoder(nn.Module):
    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MegatronBertLayer(config) for _ in range(config.num_hidden_layers))
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class MegatronBertModel(EncoderModel):
    """`forward(input_ids (batch, seq))` → last hidden state `(batch, seq, hidden)` and, with the
    pooler, the tanh-pooled first token `(batch, hidden)`."""

    config_class = MegatronBertConfig
    base_model_prefix = "bert"

    def __init__(self, config: MegatronBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        if config.add_cross_attention:
            raise UnsupportedError("MegatronBERT: add_cross_attention (encoder-decoder use) is not supported by lamina")
        self.embeddings = MegatronBertEmbeddings(config)
        self.encoder = MegatronBertEncoder(config)
        self.pooler = Pooler(config.hidden_size) if add_pooling_layer else None
        self.post_init()

    @classmethod
    def name_map(cls, config: MegatronBertConfig) -> list[Rule]:
        """The checkpoints' separate query/key/value projections ↔ lamina's one fused `qkv`."""
        rules = []
        for i in range(config.num_hidden_layers):
            attention = f"encoder.layer.{i}.attention.self."
            for kind in ("weight", "bias"):
                parts = [f"{attention}{part}.{kind}" for part in ("query", "key", "value")]
                rules.append(concat(f"{attention}qkv.{kind}", parts, [config.hidden_size] * 3))
        return rules

    @classmethod
    def masked_lm_predictions(cls, config: MegatronBertConfig) -> MaskedLMPredictions:
        return MaskedLMPredictions(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)

    def make_cache(self, kind: str = "dynamic", max_length: int | None = None) -> Cache:
        return make_cache([None] * self.config.num_hidden_layers, kind, max_length)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        **_: Any,
    ):
        """`attention_mask (batch, past + seq)` is 1 for real tokens; as a decoder, `past_key_values`
        holds earlier tokens and is returned updated when `use_cache`."""
        config = self.config
        if not config.is_decoder:  # an encoder attends both ways: there is nothing to cache
            use_cache, past_key_values = False, None
        inputs = prepare_inputs(
            self, input_ids, inputs_embeds, config.vocab_size,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            use_cache=use_cache, can_cache=config.is_decoder, past_key_values=past_key_values,
            cache_position=cache_position, position_ids=position_ids,
        )
        if token_type_ids is None:
            device = inputs.cache_position.device
            token_type_ids = torch.zeros(inputs.batch, inputs.seq, dtype=torch.long, device=device)

        hidden = self.embeddings(input_ids, token_type_ids, inputs.position_ids, inputs_embeds)
        masks = EncoderMask(attention_mask, inputs.cache_position, hidden.dtype, causal=config.is_decoder)
        cache = inputs.past_key_values
        hidden, all_hidden, (all_attentions,) = run_layer_stack(
            self, self.encoder.layer, hidden, (masks,), cache, inputs.output_attentions, inputs.output_hidden_states
        )
        if cache is not None:
            cache.advance(inputs.seq)
        hidden = self.encoder.ln(hidden)
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            hidden_states=(*all_hidden, hidden) if inputs.output_hidden_states else None,
            past_key_values=cache if inputs.use_cache else None,
            attentions=tuple(all_attentions) if inputs.output_attentions else None,
        )
        if not inputs.return_dict:
            # the reference's tuple puts the cache before the hidden states, unlike its dataclass
            fields = ("last_hidden_state", "pooler_output", "past_key_values", "hidden_states", "attentions")
            return tuple(getattr(output, f) for f in fields if getattr(output, f) is not None)
        return output


class MegatronBertForMaskedLM(EncoderForMaskedLM, base=MegatronBertModel):
    pass


class MegatronBertForPreTraining(EncoderForPreTraining, base=MegatronBertModel):
    output_class = MegatronBertForPreTrainingOutput


class MegatronBertForNextSentencePrediction(EncoderForNextSentencePrediction, base=MegatronBertModel):
    pass


class MegatronBertForSequenceClassification(EncoderForSequenceClassification, base=MegatronBertModel):
    pass


class MegatronBertForMultipleChoice(EncoderForMultipleChoice, base=MegatronBertModel):
    pass


class MegatronBertForTokenClassification(EncoderForTokenClassification, base=MegatronBertModel):
    pass


class MegatronBertForQuestionAnswering(EncoderForQuestionAnswering, base=MegatronBertModel):
    pass


class MegatronBertForCausalLM(_LanguageModelTask, GenerationMixin, base=MegatronBertModel):
    """Left-to-right LM (set `is_decoder=True`): logits `(batch, seq, vocab)`, the shifted loss, a
    key/value cache for incremental decoding, and `generate`."""

    with_pooler = False
    accepts_loss_kwargs = True  # `num_items_in_batch`, as the decoder's causal LM
    loss_type = "ForCausalLM"

    def __init__(self, config: MegatronBertConfig) -> None:
        super().__init__(config)
        self.cls = EncoderHeads(self.base_model_class.masked_lm_predictions(config), None)
        self.generation_config = GenerationConfig.from_model_config(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: Any,
    ):
        if labels is not None:
            use_cache = False
        outputs = self.encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
            output_hidden_states, past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.cls.predictions(outputs.last_hidden_state[:, keep])
        loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        output = CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(output, return_dict, self.config)

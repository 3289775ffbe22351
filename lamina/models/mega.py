"""MEGA (Moving Average Equipped Gated Attention), with transformers 4.x's checkpoints and numerics.

A MEGA block replaces multi-head attention by one gated head fed by a multi-dimensional damped
EMA (`layers/ema.py`), optionally followed by a normalised feed-forward network:

    x̂ = norm(x)                                  (pre-norm; post-norm applies it at the end)
    v = act(W_v x̂)                               values (batch, seq, intermediate)
    e = silu(EMA(x̂) + ω ⊙ x̂)                     (batch, seq, hidden)
    r, (qk, g), u = split(W_mx e)                 r: residual gate, qk: shared query/key,
                                                  g: attention gate, u: skip
    q, k = qk ⊙ γ_q + β_q,  qk ⊙ γ_k + β_k
    o = act(u + W_h ((attention(q, k, v)) ⊙ silu(g)))
    x ← x + sigmoid(r) ⊙ (o - x)

Attention is single-headed with a relative position bias (`layers/chunked_attention.py`), and
with `use_chunking` it runs within blocks of `chunk_size` tokens, linear in the length.

Decoding (`is_decoder=True`, `bidirectional=False`) keeps per layer the EMA state
`(batch, hidden, ema_projection_size)` and the keys/values that later tokens can still attend
to: all of them without chunking, at most one chunk with it. Prompts of any length and
incremental steps work with chunking too (transformers 4.x needed whole chunks and could not
decode with them). Cross-attention (`add_cross_attention`) is not supported.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Cache, LayerCache
from ..config import Layers, NonNegative, PretrainedConfig, Probability, Size, TokenId, require
from ..errors import InputError, UnsupportedError
from ..generation import GenerationConfig, GenerationMixin
from ..layers.chunked_attention import (
    ATTENTION_ACTIVATIONS,
    RotaryRelativeBias,
    SimpleRelativeBias,
    blocked_attention,
    cached_attention,
)
from ..layers.ema import MultiDimensionDampedEMA
from ..layers.heads import causal_lm_loss, masked_lm_loss, sequence_classification_loss
from ..layers.mlp import Activation, activation
from ..layers.sequence_norm import NORMALIZATION_TYPES, MegaRMSNorm, ScaleNorm, SequenceNorm
from ..modeling import PreTrainedModel
from ..outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    SequenceClassifierOutput,
    finish,
)
from .encoder import EncoderForMultipleChoice, EncoderForQuestionAnswering, EncoderForTokenClassification
from .forward import prepare_inputs, run_layer_stack


class MegaConfig(PretrainedConfig):
    """MEGA's configuration, with transformers 4.x's fields and defaults."""

    model_type = "mega"

    vocab_size: Size = 30522
    hidden_size: Size = 128
    num_hidden_layers: Layers = 4
    intermediate_size: Size = 256
    ema_projection_size: Size = 16
    bidirectional: bool = True
    shared_representation_size: Size = 64
    use_chunking: bool = False
    chunk_size: int = -1
    truncation: Size | None = None
    normalize_before_mega: bool = True
    normalization_type: str = "scalenorm"
    norm_affine: bool = True
    activation: Activation = "silu"
    attention_activation: str = "softmax"
    dropout_prob: Probability = 0.1
    hidden_dropout_prob: Probability = 0.1
    attention_probs_dropout_prob: Probability = 0.1
    use_feature_dropout: bool = False
    use_normalized_ffn: bool = True
    nffn_hidden_size: Size = 256
    normalize_before_ffn: bool = True
    nffn_activation_dropout_prob: Probability = 0.1
    max_positions: Size = 2048
    add_token_type_embeddings: bool = False
    type_vocab_size: Size = 2
    initializer_range: NonNegative = 0.02
    ema_delta_alpha_range: NonNegative = 0.2
    ema_beta_range: NonNegative = 0.02
    ema_gamma_omega_range: NonNegative = 1.0
    pad_token_id: TokenId | None = 1
    bos_token_id: TokenId | None = 0
    eos_token_id: TokenId | list[TokenId] | None = 2
    relative_positional_bias: str = "rotary"
    classifier_dropout: Probability | None = None
    use_cache: bool = True
    add_lm_hidden_dense_layer: bool = True
    num_attention_heads: Size = 1  # MEGA has one head; transformers kept the field for its tooling

    def validate(self) -> None:
        super().validate()
        require(self.normalization_type in NORMALIZATION_TYPES, "normalization_type",
                f"one of {NORMALIZATION_TYPES}", self.normalization_type)
        require(self.attention_activation in ATTENTION_ACTIVATIONS, "attention_activation",
                f"one of {ATTENTION_ACTIVATIONS}", self.attention_activation)
        require(self.relative_positional_bias in ("simple", "rotary"), "relative_positional_bias",
                "'simple' or 'rotary'", self.relative_positional_bias)
        require(self.chunk_size == -1 or self.chunk_size > 0, "chunk_size", "-1 or a positive size", self.chunk_size)
        require(not self.use_chunking or self.chunk_size > 0, "chunk_size", "a positive size when use_chunking",
                self.chunk_size)
        require(self.truncation is None or self.truncation > 0, "truncation", "None or a positive length",
                self.truncation)
        require(self.relative_positional_bias != "rotary" or self.shared_representation_size % 2 == 0,
                "shared_representation_size", "an even size for the rotary bias", self.shared_representation_size)

    @property
    def block_size(self) -> int | None:
        """Tokens per attention block: the chunk size with chunking, None (whole sequence) without."""
        return self.chunk_size if self.use_chunking else None

    @property
    def can_cache(self) -> bool:
        """Incremental decoding needs causal attention, a causal EMA, and an untruncated EMA kernel."""
        return self.is_decoder and not self.bidirectional and self.truncation is None


def _dropout(x: torch.Tensor, p: float, featurewise: bool, training: bool) -> torch.Tensor:
    """Plain dropout, or MEGA's feature dropout: one draw per (sequence, feature), zeroing that
    feature at every position of `x (batch, seq, features)`."""
    if not training or p == 0:
        return x
    if featurewise:
        return F.dropout1d(x.transpose(1, 2), p, training=True).transpose(1, 2)
    return F.dropout(x, p, training=True)


class MegaLayerCache(LayerCache):
    """One MEGA layer's decoding state.

    `ema_state (batch, hidden, ema_projection_size)` (fp32); `keys (batch, slots, z)`,
    `values (batch, slots, intermediate)`, `key_valid (batch, slots)` (False: padding) and
    `positions (slots,)` (-1: not yet written). With chunking there are `chunk_size` slots,
    slot = position % chunk_size, written in place: a key is evicted only once its chunk is over,
    and attention keeps to the query's chunk by comparing positions. Without chunking keys are
    appended.
    """

    def __init__(self, chunk_size: int | None) -> None:
        self.chunk_size = chunk_size
        self.ema_state: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.key_valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def store(self, key: torch.Tensor, value: torch.Tensor, key_valid: torch.Tensor, start: int) -> None:
        """Add `key (batch, n, z)`, `value (batch, n, v)`, `key_valid (batch, n)` at positions `start…`."""
        positions = torch.arange(start, start + key.shape[1], device=key.device)
        if self.chunk_size is None:
            if self.keys is None:
                self.keys, self.values, self.key_valid, self.positions = key, value, key_valid, positions
            else:
                self.keys = torch.cat((self.keys, key), dim=1)
                self.values = torch.cat((self.values, value), dim=1)
                self.key_valid = torch.cat((self.key_valid, key_valid), dim=1)
                self.positions = torch.cat((self.positions, positions))
            return
        if self.keys is None:
            batch, slots = key.shape[0], self.chunk_size
            self.keys = key.new_zeros(batch, slots, key.shape[2])
            self.values = value.new_zeros(batch, slots, value.shape[2])
            self.key_valid = torch.zeros(batch, slots, dtype=torch.bool, device=key.device)
            self.positions = torch.full((slots,), -1, dtype=torch.long, device=key.device)
        kept = slice(-self.chunk_size, None)  # earlier ones belong to finished chunks
        slots = positions[kept] % self.chunk_size
        self.keys.index_copy_(1, slots, key[:, kept])
        self.values.index_copy_(1, slots, value[:, kept])
        self.key_valid.index_copy_(1, slots, key_valid[:, kept])
        self.positions.index_copy_(0, slots, positions[kept])

    def reorder(self, beam_idx: torch.Tensor) -> None:
        for name in ("ema_state", "keys", "values", "key_valid"):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.index_select(0, beam_idx))

    def nbytes(self) -> int:
        tensors = (self.ema_state, self.keys, self.values, self.key_valid)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class MegaEmbeddings(nn.Module):
    """Word embeddings plus optional token-type embeddings (MEGA has no position embeddings)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.add_token_type_embeddings else None
        )

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return embeddings


class MegaMovingAverageGatedAttention(nn.Module):
    """The EMA + gated single-head attention sub-layer on `(batch, seq, hidden)` (module docstring)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.config = config
        hidden, shared, inner = config.hidden_size, config.shared_representation_size, config.intermediate_size
        self.splits = (hidden, shared, inner, hidden)
        self.act = activation(config.activation)
        self.norm = SequenceNorm(config.normalization_type, hidden, affine=config.norm_affine)
        self.ema_gate = MultiDimensionDampedEMA(hidden, config.ema_projection_size, config.bidirectional, config.truncation)
        self.v_proj = nn.Linear(hidden, inner)
        self.mx_proj = nn.Linear(hidden, shared + inner + 2 * hidden)
        self.h_proj = nn.Linear(inner, hidden)
        self.qk_weight = nn.Parameter(torch.empty(2, shared))
        self.qk_bias = nn.Parameter(torch.empty(2, shared))
        if config.relative_positional_bias == "simple":
            self.rel_pos_bias: nn.Module = SimpleRelativeBias(config.max_positions, config.chunk_size)
        else:
            self.rel_pos_bias = RotaryRelativeBias(shared)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        cache: MegaLayerCache | None,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`padding_mask (batch, seq)` bool (True: real) for the new tokens, which sit at positions
        `start…`; `cache` is read and updated in place. Returns the output and the attention weights."""
        config, training = self.config, self.training
        featurewise = config.use_feature_dropout
        residual = hidden_states
        x = self.norm(hidden_states) if config.normalize_before_mega else hidden_states
        value = self.act(self.v_proj(x))
        state = cache.ema_state if cache is not None else None
        ema, state = self.ema_gate(x, padding_mask, state, return_state=cache is not None)
        if cache is not None:
            cache.ema_state = state
        ema = _dropout(ema, config.dropout_prob, featurewise, training)
        gate, query_key, attention_gate, skip = self.mx_proj(ema).split(self.splits, dim=-1)
        query_key, attention_gate = F.silu(query_key), F.silu(attention_gate)
        query, key = (query_key.unsqueeze(2) * self.qk_weight + self.qk_bias).unbind(dim=2)
        value = _dropout(value, config.hidden_dropout_prob, featurewise, training)
        attended, weights = self._attend(query, key, value, padding_mask, cache, start)
        out = self.act(skip + self.h_proj(attended * attention_gate))
        out = _dropout(out, config.dropout_prob, featurewise, training)
        out = torch.addcmul(residual, torch.sigmoid(gate), out - residual)
        return (out if config.normalize_before_mega else self.norm(out)), weights

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        padding_mask: torch.Tensor | None,
        cache: MegaLayerCache | None,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of the new tokens: blocked over whole chunks, through the cache for the tokens
        that complete a chunk begun earlier. With both parts in one call no weights are returned."""
        config = self.config
        block, act = config.block_size, config.attention_activation
        dropout = config.attention_probs_dropout_prob if self.training else 0.0
        if cache is None:
            return blocked_attention(query, key, value, padding_mask, block, config.is_decoder, act,
                                     self.rel_pos_bias, dropout)
        length = query.shape[1]
        valid = padding_mask if padding_mask is not None else query.new_ones(query.shape[:2], dtype=torch.bool)
        if block is None:
            head = length if start > 0 else 0
        else:
            head = min(length, -start % block)  # tokens left in the chunk the cache has begun
        parts, weights = [], None
        if head:
            cache.store(key[:, :head], value[:, :head], valid[:, :head], start)
            out, weights = cached_attention(query[:, :head], cache.keys, cache.values, start, cache.positions,
                                            cache.key_valid, block, act, self.rel_pos_bias, dropout)
            parts.append(out)
        if head < length:
            rest = slice(head, None)
            out, rest_weights = blocked_attention(query[:, rest], key[:, rest], value[:, rest],
                                                  padding_mask[:, rest] if padding_mask is not None else None,
                                                  block, True, act, self.rel_pos_bias, dropout)
            cache.store(key[:, rest], value[:, rest], valid[:, rest], start + head)
            parts.append(out)
            weights = None if head else rest_weights
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], weights


class MegaNormalizedFeedForwardNetwork(nn.Module):
    """`x + fc2(act(fc1(norm(x))))`, the norm before (default) or after the residual sum."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.config = config
        self.act = activation(config.activation)
        self.norm = SequenceNorm(config.normalization_type, config.hidden_size, affine=config.norm_affine)
        self.fc1 = nn.Linear(config.hidden_size, config.nffn_hidden_size)
        self.fc2 = nn.Linear(config.nffn_hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        config, training = self.config, self.training
        x = self.norm(hidden_states) if config.normalize_before_ffn else hidden_states
        x = _dropout(self.act(self.fc1(x)), config.nffn_activation_dropout_prob, config.use_feature_dropout, training)
        out = _dropout(self.fc2(x), config.dropout_prob, config.use_feature_dropout, training) + hidden_states
        return out if config.normalize_before_ffn else self.norm(out)


class MegaBlock(nn.Module):
    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.mega_layer = MegaMovingAverageGatedAttention(config)
        self.nffn = MegaNormalizedFeedForwardNetwork(config) if config.use_normalized_ffn else None

    def forward(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None, start: int, cache: MegaLayerCache | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`need_weights` is there for the shared layer loop: MEGA's attention always has its weights."""
        hidden_states, weights = self.mega_layer(hidden_states, padding_mask, cache, start)
        if self.nffn is not None:
            hidden_states = self.nffn(hidden_states)
        return hidden_states, weights


class MegaPooler(nn.Module):
    """tanh(W · first token)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class MegaPreTrainedModel(PreTrainedModel):
    config_class = MegaConfig
    base_model_prefix = "mega"

    def _init_weights(self, module: nn.Module) -> None:
        """The reference's initialisation, for models trained from scratch or new heads."""
        config = self.config
        if isinstance(module, MultiDimensionDampedEMA):
            nn.init.normal_(module.damping_factor, std=config.ema_delta_alpha_range)
            nn.init.normal_(module.decay_factor, std=config.ema_delta_alpha_range)
            # β starts near (1, -1, 1, -1, …), which the MEGA authors found more stable
            signs = torch.ones(config.ema_projection_size, 1)
            signs[1::2] = -1.0
            nn.init.normal_(module.ema_expansion_matrix, std=config.ema_beta_range)
            module.ema_expansion_matrix.add_(signs.to(module.ema_expansion_matrix.device))
            nn.init.normal_(module.kernel_projection_matrix, std=config.ema_gamma_omega_range)
            nn.init.normal_(module.residual_weight, std=config.ema_gamma_omega_range)
        elif isinstance(module, SimpleRelativeBias):
            nn.init.normal_(module.rel_pos_bias, std=config.initializer_range)
        elif isinstance(module, RotaryRelativeBias):
            nn.init.normal_(module.alpha, std=config.initializer_range)
            nn.init.normal_(module.b_param, std=config.initializer_range)
        elif isinstance(module, (ScaleNorm, MegaRMSNorm)):
            module.reset_parameters()
        elif isinstance(module, MegaMovingAverageGatedAttention):
            nn.init.normal_(module.qk_weight, std=config.initializer_range)
            nn.init.zeros_(module.qk_bias)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.embedding_layer.word_embeddings


class MegaModel(MegaPreTrainedModel):
    """The MEGA encoder / decoder: `forward(input_ids)` → `last_hidden_state (batch, seq, hidden)`
    and, with the pooling layer, `pooler_output (batch, hidden)`.

    As a decoder (`is_decoder=True`, `bidirectional=False`) it returns `past_key_values`, a `Cache`
    of `MegaLayerCache`s to pass back with the next tokens.
    """

    def __init__(self, config: MegaConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        if config.add_cross_attention:
            raise UnsupportedError("MEGA cross-attention (config.add_cross_attention=True) is not supported by lamina")
        self.embedding_layer = MegaEmbeddings(config)
        self.layers = nn.ModuleList(MegaBlock(config) for _ in range(config.num_hidden_layers))
        self.pooler = MegaPooler(config) if add_pooling_layer else None
        self.post_init()

    @classmethod
    def classifier_dropout(cls, config: MegaConfig) -> float:
        """Dropout before the token-classification layer (the encoders' heads ask the base model)."""
        return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob

    def make_cache(self, *_: Any) -> Cache:
        """An empty decoding cache (its size is bounded by the chunk size, not by a maximum length)."""
        if not self.config.can_cache:
            raise UnsupportedError(
                "MEGA caches only causal models without EMA truncation (is_decoder=True, bidirectional=False, "
                f"truncation=None); this one has is_decoder={self.config.is_decoder}, "
                f"bidirectional={self.config.bidirectional}, truncation={self.config.truncation}"
            )
        return Cache([MegaLayerCache(self.config.block_size) for _ in self.layers])

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
    ):
        """`attention_mask` is `(batch, seq)` for the new tokens or `(batch, past + seq)` for all.
        MEGA has no position ids (its positions are relative, counted by the cache); `position_ids`
        is accepted only as None, for the heads shared with the other encoders."""
        config = self.config
        if position_ids is not None:
            raise InputError("MEGA takes no position_ids: positions are relative and counted by the cache")
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise UnsupportedError("MEGA cross-attention (encoder_hidden_states) is not supported by lamina")
        inputs = prepare_inputs(
            self, input_ids, inputs_embeds, config.vocab_size,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            use_cache=use_cache, can_cache=config.can_cache, past_key_values=past_key_values,
        )
        hidden = self.embedding_layer(input_ids, token_type_ids, inputs_embeds)
        padding_mask = _new_tokens_mask(attention_mask, inputs.past_length, inputs.seq)
        cache = inputs.past_key_values
        hidden, all_hidden, (all_weights,) = run_layer_stack(
            self, self.layers, hidden, (padding_mask, inputs.past_length), cache,
            inputs.output_attentions, inputs.output_hidden_states,
        )
        if cache is not None:
            cache.advance(inputs.seq)
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            hidden_states=(*all_hidden, hidden) if inputs.output_hidden_states else None,
            past_key_values=cache if inputs.use_cache else None,
            attentions=tuple(all_weights) if inputs.output_attentions else None,
        )
        return finish(out, inputs.return_dict, config)


def _new_tokens_mask(attention_mask: torch.Tensor | None, start: int, length: int) -> torch.Tensor | None:
    """The boolean padding mask `(batch, length)` of the new tokens from a mask over them or over all."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[1] not in (length, start + length):
        raise InputError(
            f"attention_mask: expected (batch, {length}) or (batch, {start + length}) with {start} cached tokens, "
            f"found {tuple(attention_mask.shape)}"
        )
    return attention_mask[:, -length:].bool()


class _MegaTask(MegaPreTrainedModel, base=MegaModel):
    """A head over `MegaModel` (without its pooler), held under `mega` as in the reference checkpoints."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.mega = MegaModel(config, add_pooling_layer=False)

    def run_base(self, **inputs: Any) -> BaseModelOutputWithPoolingAndCrossAttentions:
        return self.mega(**inputs, return_dict=True)


class _MegaLMHead(_MegaTask):
    """Shared by the causal and masked LMs: optional tanh dense layer, then the vocabulary projection."""

    head_name: ClassVar[str] = "lm_head"

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if config.add_lm_hidden_dense_layer else None
        setattr(self, self.head_name, nn.Linear(config.hidden_size, config.vocab_size))
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return getattr(self, self.head_name)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden = torch.tanh(self.dense(hidden))
        return getattr(self, self.head_name)(hidden)


class MegaForCausalLM(_MegaLMHead, GenerationMixin):
    """`forward(input_ids, labels=…)` → logits `(batch, seq, vocab)` and the shifted LM loss; with
    `is_decoder=True, bidirectional=False` it decodes incrementally through `past_key_values`."""

    tied_weights = {"lm_head.weight": "mega.embedding_layer.word_embeddings.weight"}

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.generation_config = GenerationConfig.from_model_config(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
    ):
        if labels is not None:
            use_cache = False
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self._logits(outputs.last_hidden_state[:, -logits_to_keep:])
        out = CausalLMOutputWithCrossAttentions(
            loss=causal_lm_loss(logits, labels) if labels is not None else None,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return finish(out, return_dict, self.config)

    def make_generation_cache(self, batch_size: int, max_length: int) -> Cache | None:
        """MEGA's cache does not depend on the length; models that cannot cache recompute each step."""
        return self.mega.make_cache() if self.config.can_cache else None

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        position_ids: torch.LongTensor,
        past_key_values: Cache | None,
        cache_position: torch.LongTensor,
    ) -> dict[str, Any]:
        """MEGA positions are implicit (its cache counts tokens), so position ids are not passed on."""
        return dict(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                    use_cache=past_key_values is not None, logits_to_keep=1, return_dict=True)


class MegaForMaskedLM(_MegaLMHead):
    """`forward(input_ids, labels=…)` → logits `(batch, seq, vocab)`; labels of -100 are ignored."""

    head_name = "mlm_head"
    tied_weights = {"mlm_head.weight": "mega.embedding_layer.word_embeddings.weight"}

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                encoder_hidden_states=None, encoder_attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, use_cache=False,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self._logits(outputs.last_hidden_state)
        out = MaskedLMOutput(
            loss=masked_lm_loss(logits, labels) if labels is not None else None,
            logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(out, return_dict, self.config)


class MegaClassificationHead(nn.Module):
    """dropout → tanh(dense) → dropout → out_proj, on the first token."""

    def __init__(self, config: MegaConfig, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class MegaForSequenceClassification(_MegaTask):
    """`forward(input_ids, labels=…)` → logits `(batch, num_labels)` from the first token; the loss
    follows `config.problem_type` (decided from the labels when unset)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.classifier = MegaClassificationHead(config, MegaModel.classifier_dropout(config))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds, use_cache=False,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(outputs.last_hidden_state)
        out = SequenceClassifierOutput(
            loss=sequence_classification_loss(logits, labels, self.config) if labels is not None else None,
            logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(out, return_dict, self.config)


class MegaForMultipleChoice(MegaPreTrainedModel, EncoderForMultipleChoice, base=MegaModel):
    """`forward(input_ids (batch, choices, seq), labels (batch,))` → logits `(batch, choices)`
    from the pooled first token of each choice (the encoders' head)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)  # the reference ignores classifier_dropout here


class MegaForTokenClassification(MegaPreTrainedModel, EncoderForTokenClassification, base=MegaModel):
    """`forward(input_ids, labels=…)` → logits `(batch, seq, num_labels)` (the encoders' head)."""


class MegaForQuestionAnswering(MegaPreTrainedModel, EncoderForQuestionAnswering, base=MegaModel):
    """`forward(input_ids, start_positions=…, end_positions=…)` → start / end logits `(batch, seq)`
    (the encoders' head)."""

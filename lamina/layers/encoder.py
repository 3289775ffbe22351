"""Blocks shared by the BERT-style encoders (MegatronBERT, MobileBERT).

Module names follow the BERT checkpoint layout (`query`, `key`, `value`, `transform.LayerNorm`,
`predictions.decoder`, …), so those checkpoints load unchanged; only a fused `qkv` projection
needs its family's name map.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .attention import attend, build_attention_mask
from .mlp import activation

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")


class NoNorm(nn.Module):
    """MobileBERT's stand-in for LayerNorm: an elementwise `x * weight + bias`, no statistics."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)


def make_encoder_norm(kind: str, size: int, eps: float) -> nn.Module:
    """`"layer_norm"` or MobileBERT's `"no_norm"`."""
    if kind == "no_norm":
        return NoNorm(size)
    if kind == "layer_norm":
        return nn.LayerNorm(size, eps=eps)
    raise ConfigError(f"normalization_type: expected 'layer_norm' or 'no_norm', found {kind!r}")


class EncoderMask:
    """The additive attention mask of one forward pass, built on first use from the key positions
    the cache reports (so dynamic and static caches both work) and shared by every layer.

    `attention_mask (batch, keys)` is 1 for real tokens; `causal` hides later keys (decoder use).
    Without padding or causality there is nothing to mask and layers get None (the fast path).
    """

    def __init__(
        self, attention_mask: torch.Tensor | None, query_positions: torch.Tensor, dtype: torch.dtype, causal: bool
    ) -> None:
        if attention_mask is not None and attention_mask.dim() != 2:
            raise InputError(
                f"attention_mask: expected shape (batch, keys) with 1 for real tokens, found {tuple(attention_mask.shape)}"
            )
        self.attention_mask = attention_mask
        self.query_positions = query_positions
        self.dtype = dtype
        self.causal = causal
        self._built: dict[int, torch.Tensor | None] = {}

    def __call__(self, key_positions: torch.Tensor) -> torch.Tensor | None:
        """`(batch or 1, 1, queries, keys)` or None."""
        if self.attention_mask is None and not self.causal:
            return None
        keys = key_positions.shape[0]
        if keys not in self._built:
            self._built[keys] = build_attention_mask(
                self.query_positions, key_positions, self.attention_mask, None, self.dtype, causal=self.causal
            )
        return self._built[keys]


class EncoderSelfAttention(nn.Module):
    """BERT self-attention with separate `query`/`key`/`value` projections.

    Queries, keys and values may be projected from different inputs of different widths
    (MobileBERT's bottlenecks); when they always come from one input, `fused` projects all three
    with one `qkv` matrix (the family's name map splits it into the checkpoint's `query`, `key`,
    `value`). `position_embedding_type` "relative_key" adds q·r(i−j) to the
    scores, "relative_key_query" also k·r(i−j), with r a learned embedding of the distance; both
    are folded into the additive mask so every backend runs them.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        input_sizes: tuple[int, int, int],
        dropout: float,
        backend: str,
        position_embedding_type: str = "absolute",
        max_position_embeddings: int = 512,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ConfigError(
                f"position_embedding_type: expected one of {POSITION_EMBEDDING_TYPES}, found {position_embedding_type!r}"
            )
        self.num_heads, self.head_dim = num_heads, head_dim
        width = num_heads * head_dim
        self.fused = fused
        if fused:
            self.qkv = nn.Linear(input_sizes[0], 3 * width)
        else:
            self.query = nn.Linear(input_sizes[0], width)
            self.key = nn.Linear(input_sizes[1], width)
            self.value = nn.Linear(input_sizes[2], width)
        self.dropout = dropout
        self.backend = backend
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        if position_embedding_type != "absolute":
            self.distance_embedding = nn.Embedding(2 * max_position_embeddings - 1, head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def relative_scores(
        self, query: torch.Tensor, key: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        """Unscaled distance scores `(batch, heads, queries, keys)`."""
        distance = query_positions[:, None] - key_positions[None, :]
        # a static cache's unwritten slots can lie further ahead than the table reaches; they are
        # masked, so any row of the table serves
        index = (distance + self.max_position_embeddings - 1).clamp(0, 2 * self.max_position_embeddings - 2)
        table = self.distance_embedding(index).to(query.dtype)
        scores = torch.einsum("bhqd,qkd->bhqk", query, table)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhkd,qkd->bhqk", key, table)
        return scores

    def forward(
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        masks: EncoderMask,
        cache=None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs `(batch, seq, width_i)` → output `(batch, seq, heads * head_dim)` and, when asked,
        the attention probabilities `(batch, heads, seq, keys)`."""
        if self.fused:
            query, key, value = (self._heads(t) for t in self.qkv(query_input).chunk(3, dim=-1))
        else:
            query = self._heads(self.query(query_input))
            key = self._heads(self.key(key_input))
            value = self._heads(self.value(value_input))
        query_positions = key_positions = masks.query_positions
        if cache is not None:
            key, value, key_positions = cache.update(key, value, query_positions)
        mask = masks(key_positions)
        scale = self.head_dim**-0.5
        if self.position_embedding_type != "absolute":
            bias = self.relative_scores(query, key, query_positions, key_positions) * scale
            mask = bias if mask is None else mask + bias
        out, weights = attend(
            self.backend, query, key, value, mask, scale,
            dropout=self.dropout if self.training else 0.0, need_weights=need_weights,
        )
        batch, _, seq, _ = out.shape
        return out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim), weights


class Pooler(nn.Module):
    """The first token's state, through `dense` + tanh unless `activate` is off: `(batch, hidden)`."""

    def __init__(self, hidden_size: int, activate: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size) if activate else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first = hidden_states[:, 0]
        return first if self.dense is None else torch.tanh(self.dense(first))


class PredictionHeadTransform(nn.Module):
    """dense → activation → LayerNorm, before the vocabulary projection."""

    def __init__(self, hidden_size: int, act: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = activation(act)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class MaskedLMPredictions(nn.Module):
    """`(batch, seq, hidden)` → vocabulary logits `(batch, seq, vocab)`.

    `decoder.weight` `(vocab, embedding_size)` is tied to the word embeddings and `decoder.bias` to
    `bias` when the config ties embeddings (untied, the reference uses the decoder's own bias). When
    the embeddings are narrower than the hidden states (MobileBERT), `dense.weight`
    `(hidden − embedding, vocab)` supplies the remaining rows of the output projection, stacked under
    the transposed decoder.
    """

    def __init__(self, hidden_size: int, vocab_size: int, act: str, eps: float, embedding_size: int | None = None) -> None:
        super().__init__()
        self.transform = PredictionHeadTransform(hidden_size, act, eps)
        self.decoder = nn.Linear(embedding_size or hidden_size, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.dense = None
        if embedding_size is not None:
            self.dense = nn.Linear(vocab_size, hidden_size - embedding_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.transform(hidden_states)
        if self.dense is None:
            return self.decoder(hidden_states)
        projection = torch.cat([self.decoder.weight.t(), self.dense.weight], dim=0)
        return hidden_states.matmul(projection) + self.decoder.bias


class EncoderHeads(nn.Module):
    """The `cls` container of BERT checkpoints: `predictions` (MLM) and/or `seq_relationship` (NSP)."""

    def __init__(self, predictions: nn.Module | None, nsp_hidden_size: int | None) -> None:
        super().__init__()
        if predictions is not None:
            self.predictions = predictions
        if nsp_hidden_size is not None:
            self.seq_relationship = nn.Linear(nsp_hidden_size, 2)
